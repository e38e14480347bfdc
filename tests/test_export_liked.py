"""Exporting a LoRA of what is liked (KTO, DPO, a picks LoRA): its own card, metadata and ComfyUI
workflows, all for the positive guidance pass with the prompt unchanged; the card's diffusers snippet
renders the app's pixels; the advice follows the run's measurements, else the demo world's
preference experiment, labelled as such."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers_comfyui import check_api, check_ui, lora_reaches_only_the_positive, same_graph, sampler
from PIL import Image
from safetensors import safe_open

from negalora.api import GenerateRequest
from negalora.demo_world import published
from negalora.export import ExportRequest, export_lora
from negalora.export import evidence as ev
from negalora.generate import Generator, generate_to_store
from negalora.home import Home
from negalora.store import Store
from negalora.train.config import TrainConfig
from negalora.train.trainer import Trainer

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def liked(tmp_path_factory, demo_model):
    from negalora.models.demo import ensure_demo_folder

    home = Home(tmp_path_factory.mktemp("liked-home"))
    ensure_demo_folder(home.models / "demo")  # the card's snippet loads the demo model from there
    store = Store(home)
    prompts = (PROMPT, "a yellow square on a black background")
    done = generate_to_store(Generator(demo_model), store, GenerateRequest(prompts=prompts, count=4, seed=1, steps=4))
    ids = [s.id for s, _ in done]
    store.rate([ids[0], ids[4], ids[7]], "pick")
    store.rate([ids[1], ids[2], ids[5], ids[6]], "reject")
    runs = {}
    trainings = (
        ("kto", {"objective": "kto"}),
        ("picks", {"source": "picks"}),
        ("picks_te", {"source": "picks", "train_text_encoder": True}),
    )
    for name, extra in trainings:
        config = TrainConfig(
            steps=4, lr=1e-2, batch=2, checkpoint_every=2, keep_last=0, rank=4, seed=3, validation_steps=0,
            validation_prompts=(PROMPT,), **extra,
        )  # fmt: skip
        result = Trainer(home, store, demo_model).start(config)
        assert result.status == "done", result.message
        runs[name] = result.run_id
    yield SimpleNamespace(home=home, store=store, **runs)
    store.close()


def _card(result) -> str:
    return Path(result.model_card).read_text(encoding="utf-8")


def _row(card: str, start: str) -> str:
    return next(line for line in card.splitlines() if line.startswith(f"| {start}"))


def test_a_kto_lora_exports_with_a_card_metadata_and_workflows_for_the_positive_pass(cli, liked):
    r = cli("export", liked.kto, "--format", "kohya", "--home", liked.home.root, "--json", "--no-verify")
    assert r.code == 0, r.err
    out = r.json
    path = Path(out["path"])
    assert path.name.startswith("kto-") and out["best_way"] == ev.POSITIVE_PASS and out["measured_on"] == "demo_world"
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["negalora.objective"] == "kto" and "modelspec.trigger_phrase" not in meta
    tags = {PROMPT: 3, "a yellow square on a black background": 4}  # the captions: each image's own prompt
    assert json.loads(meta["ss_tag_frequency"]) == {"picks and rejects": tags}
    assert "positive guidance pass" in meta["modelspec.description"]
    ui = json.loads(Path(out["comfyui_workflow"]).read_text(encoding="utf-8"))
    api = json.loads(Path(out["comfyui_api_workflow"]).read_text(encoding="utf-8"))
    check_ui(ui)
    check_api(api)
    same_graph(ui, api)
    lora_reaches_only_the_positive(api)
    _, ks = sampler(api)
    assert api[ks["inputs"]["negative"][0]]["inputs"]["text"] == ""  # no token: the prompt is the artist's own
    card = _card(SimpleNamespace(model_card=out["model_card"]))
    assert "A LoRA of **what you liked**" in card and "on the **positive** guidance pass" in card
    assert "KTO (beta 1000) on 3 picked images as desirable and 4 rejected ones as undesirable" in card
    assert "**This run has not been measured yet**" in card and published.PREFERENCE_COMMAND in card
    positive = _row(card, "LoRA on the positive pass only")
    assert "**(best)**" in positive and "0.0% defects" in positive and "shape as asked 97%" in positive
    assert "10.4% defects" in _row(card, "no LoRA, no token")
    assert "4.9% defects" in _row(card, "not this LoRA: a `wrong` LoRA alone")
    assert "Cond Set Props** (`hooks`) on the *Positive*" in card and "The negative text is empty" in card
    assert f'--lora "{path}" --lora-passes positive`' in card
    a1111 = card.split("### AUTOMATIC1111 / Forge", 1)[1].split("###", 1)[0]
    assert "0.0% defects" in a1111 and f"<lora:{path.stem}:1>" in a1111 and "no token is needed" in a1111
    assert "wrong` in the negative prompt" not in card.split("## How to use it", 1)[0]  # the head is not a wrong card's


def test_a_picks_lora_that_lost_shape_in_the_demo_world_is_not_recommended(liked):
    result = export_lora(liked.store, ExportRequest(liked.picks, "kohya", verify=False))
    card = _card(result)
    assert Path(result.path).name.startswith("right-")  # a picks LoRA's token names it
    assert result.best_way == ev.WRONG_NEGATIVE
    assert "**No way of using this LoRA beat a `wrong` LoRA alone on the negative pass**" in card
    assert "the asked shape 26 points less often than base" in _row(card, "LoRA on the positive pass only")
    assert "the asked shape 31 points less often" in _row(card, "LoRA on the positive pass + a `wrong` LoRA")
    a1111 = card.split("### AUTOMATIC1111 / Forge", 1)[1].split("###", 1)[0]
    assert "that way was not measured for this kind of LoRA" in a1111  # the experiment had no such column
    assert "leave it out" in a1111


def test_a_liked_export_verifies_without_the_token(liked, demo_model):
    result = export_lora(
        liked.store, ExportRequest(liked.kto, "kohya", name="kto-verified"), generator=Generator(demo_model)
    )
    assert result.verification["verified"] and result.verification["negative"] == ""
    card = _card(result)
    assert "LoRA modules loaded" in card and "negative `" not in card.split("## Check and hashes", 1)[1]


@pytest.mark.parametrize("which", ["kto", "picks_te"])  # UNet only; with both text encoders
def test_the_liked_cards_diffusers_snippet_renders_the_apps_pixels(liked, demo_model, tmp_path, monkeypatch, which):
    run_id = getattr(liked, which)
    result = export_lora(liked.store, ExportRequest(run_id, "kohya", name=f"snippet-{which}", verify=False))
    api = json.loads(Path(result.comfyui_api_workflow).read_text(encoding="utf-8"))
    lora_reaches_only_the_positive(api)
    hooked = {v["class_type"] for v in api.values()} & {"SetClipHooks", "ConditioningSetProperties"}
    assert hooked == ({"SetClipHooks"} if which == "picks_te" else {"ConditioningSetProperties"})
    section = _card(result).split("### diffusers", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15 and "with positive_pass(pipe):" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "liked-card-snippet", "exec"), {})
    with Image.open(tmp_path / "positive-pass.png") as im:
        theirs = np.asarray(im.convert("RGB"), dtype=np.int16)
    gen = Generator(demo_model)
    (recipe,) = gen.plan(
        GenerateRequest(prompts=(PROMPT,), seed=1, steps=20, guidance=3.0, lora=result.path, lora_passes="positive")
    )
    ours = np.asarray(gen.render(recipe), dtype=np.int16)
    gen.release_lora()
    assert np.abs(theirs - ours).max() <= 1
    (plain,) = gen.plan(GenerateRequest(prompts=(PROMPT,), seed=1, steps=20, guidance=3.0))
    assert np.abs(np.asarray(gen.render(plain), dtype=np.int16) - ours).max() > 1  # the LoRA acts
    both = code.replace("with positive_pass(pipe):", "if True:").replace("positive-pass.png", "both.png")
    exec(compile(both, "liked-card-snippet-both", "exec"), {})
    with Image.open(tmp_path / "both.png") as im:
        assert np.abs(np.asarray(im.convert("RGB"), dtype=np.int16) - ours).max() > 1


def test_the_export_page_names_every_way_the_evidence_can_pick():
    from negalora.export.evidence import LIKED_WAYS, WAYS
    from negalora.ui.export_page import WAY_NAMES, evidence_text

    assert set(WAYS) | set(LIKED_WAYS) <= set(WAY_NAMES)
    text = evidence_text({"best_way": "positive_pass", "measured_on": "demo_world", "strength": "marked"})
    assert "the LoRA on the positive pass, the prompt unchanged did best there" in text
