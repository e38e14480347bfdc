"""How an export tells the artist to use the LoRA elsewhere: the ComfyUI workflows beside every
export (held against ComfyUI's node schemas), the diffusers snippet of the card (run as written on
the demo model: the app's pixels), and a card that leads with what this run measured best, or with
the demo world's numbers, labelled, when it measured nothing."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers_comfyui import check_api, check_ui, lora_reaches_only_the_negative, same_graph, sampler
from helpers_export import seed_rejects, train
from PIL import Image

from negalora.compare.runner import CompareRequest, run_comparison
from negalora.demo_world import published
from negalora.export import ExportRequest, export_lora
from negalora.export import evidence as ev
from negalora.generate import GenerateRequest, Generator
from negalora.home import Home

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_model):
    from negalora.models.demo import ensure_demo_folder

    home = Home(tmp_path_factory.mktemp("usage-home"))
    ensure_demo_folder(home.models / "demo")  # where the app keeps it: the card's snippet loads it from there
    store = seed_rejects(home, 4)
    plain = train(home, store, demo_model)  # UNet only
    te = train(home, store, demo_model, train_text_encoder=True)  # with both text encoders
    yield SimpleNamespace(home=home, store=store, plain=plain, te=te)
    store.close()


def _workflows(out: dict) -> tuple[dict, dict]:
    ui = json.loads(Path(out["comfyui_workflow"]).read_text(encoding="utf-8"))
    api = json.loads(Path(out["comfyui_api_workflow"]).read_text(encoding="utf-8"))
    check_ui(ui)
    check_api(api)
    same_graph(ui, api)
    return ui, api


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_cli_export_writes_both_comfyui_workflows_in_either_format(cli, runs, fmt):
    r = cli("export", runs.plain, "--format", fmt, "--home", runs.home.root, "--json", "--no-verify")
    assert r.code == 0, r.err
    out = r.json
    path = Path(out["path"])
    ui, api = _workflows(out)
    assert set(out["files"]) >= {out["path"], out["model_card"], out["comfyui_workflow"], out["comfyui_api_workflow"]}
    assert all(Path(f).is_file() for f in out["files"])
    assert Path(out["comfyui_workflow"]).parent == path.parent
    lora_reaches_only_the_negative(api)
    hook = next(v for v in api.values() if v["class_type"] == "CreateHookLora")
    if fmt == "kohya":
        assert Path(out["comfyui_workflow"]).name == f"{path.stem}.comfyui.json"
        assert hook["inputs"]["lora_name"] == path.name
    else:  # the folder goes into models/loras as it is
        assert hook["inputs"]["lora_name"] == f"{path.parent.name}/pytorch_lora_weights.safetensors"
        card = Path(out["model_card"]).read_text(encoding="utf-8")
        assert "does not map their attention layers" in card  # ComfyUI would drop them silently
    _, ks = sampler(api)
    assert ks["inputs"]["cfg"] == 3.0 and ks["inputs"]["steps"] == 20  # the demo set's recipe
    ckpt = next(v for v in api.values() if v["class_type"] == "CheckpointLoaderSimple")
    assert ckpt["inputs"]["ckpt_name"] == "PICK-YOUR-SDXL-BASE.safetensors"  # the demo model is no file
    assert ui["extra"]["negalora"]["run"] == runs.plain and out["measured_on"] == "demo_world"


def test_a_text_encoder_lora_hooks_the_negative_clip_a_unet_lora_the_negative_cond(runs):
    forms = {}
    for run_id in (runs.plain, runs.te):
        result = export_lora(runs.store, ExportRequest(run_id, "kohya", name=f"form-{run_id}", verify=False))
        _, api = _workflows(result.to_dict())
        lora_reaches_only_the_negative(api)
        forms[run_id] = {v["class_type"] for v in api.values()}
    assert "ConditioningSetProperties" in forms[runs.plain] and "SetClipHooks" not in forms[runs.plain]
    assert "SetClipHooks" in forms[runs.te] and "ConditioningSetProperties" not in forms[runs.te]


def _snippet(card: str) -> str:
    section = card.split("### diffusers", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("which", ["plain", "te"])
def test_the_cards_diffusers_snippet_renders_the_apps_pixels(runs, demo_model, tmp_path, monkeypatch, which):
    run_id = getattr(runs, which)
    result = export_lora(runs.store, ExportRequest(run_id, "kohya", name=f"snippet-{which}", verify=False))
    card = Path(result.model_card).read_text(encoding="utf-8")
    code = _snippet(card)
    assert len(code.strip().splitlines()) <= 15
    assert "with negative_pass(pipe):" in code and "load_lora_weights" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "model-card-snippet", "exec"), {})  # as written, on the demo model's folder
    with Image.open(tmp_path / "negative-pass.png") as im:
        theirs = np.asarray(im.convert("RGB"), dtype=np.int16)
    # the app: the same recipe, the LoRA on the negative pass (its default)
    gen = Generator(demo_model)
    (recipe,) = gen.plan(
        GenerateRequest(
            prompts=("a red circle on a blue background",),
            negative="wrong",
            seed=1,
            steps=20,
            guidance=3.0,
            lora=result.path,
            lora_passes="negative",
        )
    )
    ours = np.asarray(gen.render(recipe), dtype=np.int16)
    gen.release_lora()
    assert np.abs(theirs - ours).max() <= 1
    # and the snippet's LoRA is not a no-op: the same pipeline call without the with block differs
    both = code.replace("with negative_pass(pipe):", "if True:").replace("negative-pass.png", "both.png")
    exec(compile(both, "model-card-snippet-both", "exec"), {})
    with Image.open(tmp_path / "both.png") as im:
        assert np.abs(np.asarray(im.convert("RGB"), dtype=np.int16) - ours).max() > 1


def test_a_card_without_measurements_gives_the_demo_world_numbers_and_says_so(runs):
    result = export_lora(runs.store, ExportRequest(runs.plain, "kohya", name="unmeasured", verify=False))
    card = Path(result.model_card).read_text(encoding="utf-8")
    assert result.measured_on == "demo_world" and result.best_way == ev.NEGATIVE_PASS
    assert "**This run has not been measured yet**" in card and "**demo world**" in card
    assert published.COMMAND in card
    assert "4.9% defects" in card and "10.4% defects" in card and "12.8% defects" in card
    both_row = next(line for line in card.splitlines() if line.startswith("| LoRA on both passes"))
    assert "**worse than base**" in both_row  # the losing way says so beside it
    assert "the asked shape 50 points less often" in both_row  # why: its defect intervals overlap base's
    neg_row = next(line for line in card.splitlines() if line.startswith("| LoRA on the negative pass"))
    assert "worse than base" not in neg_row and "4 points less often than base" in neg_row
    a1111 = card.split("### AUTOMATIC1111 / Forge", 1)[1].split("###", 1)[0]
    assert "worse than using no LoRA at all" in a1111
    assert f"negalora compare --lora {runs.plain} --step 4 --scales 0,0.25,0.5,0.75,1 --lora-passes both" in a1111


def test_a_card_of_a_measured_run_names_its_numbers_and_its_best_both_pass_strength(runs, demo_model):
    store = runs.store
    gen = Generator(demo_model)
    base = dict(prompts=("a red circle on a blue background",), seeds=(1, 2, 3), lora=runs.te, steps=3, guidance=3.0)
    three = run_comparison(gen, store, CompareRequest(**base))
    sweep = run_comparison(
        gen, store, CompareRequest(**base, kind="scale_sweep", scales=(0.0, 0.5, 1.0), lora_passes="both")
    )
    gen.release_lora()
    keys = [c.key for c in three.columns]
    by_col = {k: [row[i].id for row in three.cells] for i, k in enumerate(keys)}
    # the artist's verdicts: base and `wrong` only lose, the negative pass wins
    store.rate(by_col["base"], "reject")
    store.rate(by_col["negative"][:2], "reject")
    store.rate(by_col["negative"][2:], "pick")
    store.rate(by_col["lora"], "pick")  # the LoRA on the negative pass (the default third column)
    store.rate(by_col["lora_both"][:1], "reject")
    store.rate(by_col["lora_both"][1:], "pick")
    # the sweep: strength 0.5 on both passes rated best
    scale_cols = {c.lora_scale: i for i, c in enumerate(sweep.columns)}
    store.rate([row[scale_cols[0.0]].id for row in sweep.cells], "reject")
    store.rate([row[scale_cols[0.5]].id for row in sweep.cells], "pick")
    store.rate([row[scale_cols[1.0]].id for row in sweep.cells][:2], "reject")
    # and a blind vote: the negative pass over base, twice
    a, b = by_col["lora"], by_col["base"]
    for i in range(2):
        store.add_vote("lora", a[i], "base", b[i], True, "left", run_id=runs.te, step=4, comparison_id=three.id)
    result = export_lora(store, ExportRequest(runs.te, "kohya", name="measured", verify=False))
    card = Path(result.model_card).read_text(encoding="utf-8")
    assert result.measured_on == "run" and result.best_way == ev.NEGATIVE_PASS
    assert "this run's own comparisons" in card and "demo world" not in card.split("## How to use it", 1)[1]
    rows = {line.split("|")[1].strip(): line for line in card.splitlines() if line.startswith("| ")}
    neg = next(v for k, v in rows.items() if k.startswith("LoRA on the negative pass"))
    assert "0 of 3 rated cells rejected" in neg and "**(best)**" in neg
    assert "beat base in 100% of 2 blind votes" in neg
    assert "3 of 3 rated cells rejected" in next(v for k, v in rows.items() if k.startswith("no LoRA"))
    assert "worse than base" not in neg
    a1111 = card.split("### AUTOMATIC1111 / Forge", 1)[1].split("###", 1)[0]
    assert "strength **0.5**" in a1111 and "<lora:measured:0.5>" in a1111
    # a strength the artist marks wins over the sweep
    store.set_best_scale(runs.te, 0.75)
    try:
        marked = export_lora(store, ExportRequest(runs.te, "kohya", name="measured", verify=False))
        assert "<lora:measured:0.75>" in Path(marked.model_card).read_text(encoding="utf-8")
    finally:
        store.set_best_scale(runs.te, None)
    # where the run measured both passes best, the workflow is the plain LoraLoader one
    store.rate(by_col["lora"], "reject")
    store.rate(by_col["lora_both"], "pick")
    flipped = export_lora(store, ExportRequest(runs.te, "kohya", name="flipped", verify=False))
    assert flipped.best_way == ev.BOTH_PASSES
    _, api = _workflows(flipped.to_dict())
    loader = next(v for v in api.values() if v["class_type"] == "LoraLoader")
    assert loader["inputs"]["strength_model"] == 0.5  # the sweep's best strength, not a fixed 1
    neg_row = next(
        line
        for line in Path(flipped.model_card).read_text(encoding="utf-8").splitlines()
        if line.startswith("| LoRA on the negative pass")
    )
    assert "**worse than base**" not in neg_row and "3 of 3 rated cells rejected" in neg_row
    for ids in by_col.values():
        store.rate(ids, None)
    for row in sweep.cells:
        store.rate([c.id for c in row], None)


def test_the_demo_world_numbers_are_the_reports():
    report = (ROOT / published.REPORT).read_text(encoding="utf-8")
    for label, bad, n, shape in published.ROWS.values():
        line = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3] == f"{bad} / {n}" and cells[-1] == f"{shape}%", line
    assert published.COMMAND in report
    preference = (ROOT / published.PREFERENCE_REPORT).read_text(encoding="utf-8")
    for rows in published.PREFERENCE_ROWS.values():
        for label, bad, n, shape in rows.values():
            line = next(line for line in preference.splitlines() if line.startswith(f"| {label} |"))
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[2] == f"{bad} / {n}" and cells[-1].startswith(f"{shape}% ("), line
    assert published.PREFERENCE_COMMAND in preference
