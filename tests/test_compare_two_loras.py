"""A comparison column with two LoRAs, one per guidance pass (a liked LoRA on the positive pass, a
`wrong` LoRA on the negative), and a liked LoRA compared where it measured best."""

import json

import numpy as np
import pytest
from helpers_lora import write_demo_lora
from PIL import Image
from safetensors.torch import load_file, save_file

from negalora.compare.prompt_sets import after_training_request, liked_lora, measured_passes
from negalora.compare.runner import CompareRequest, run_comparison
from negalora.errors import NegaloraError
from negalora.generate import GenerateRequest
from negalora.pngmeta import recipe_fields_from_parameters
from negalora.store import Store

STEPS = 3


@pytest.fixture(scope="module")
def loras(demo_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    liked = write_demo_lora(demo_model.pipe, folder / "kto.safetensors", seed=1)
    # the metadata an exported KTO LoRA carries (negalora/export/metadata.py)
    save_file(
        load_file(liked), liked, metadata={"negalora.objective": "kto", "negalora.learned_from": "picks and rejects"}
    )
    wrong = write_demo_lora(demo_model.pipe, folder / "wrong.safetensors", seed=2)
    return liked, wrong


@pytest.fixture
def store(home):
    s = Store(home)
    yield s
    s.close()


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_the_two_lora_column_renders_both_and_records_both(generator, store, loras):
    liked, wrong = loras
    request = CompareRequest(
        prompts=("a red circle",),
        seeds=(5,),
        lora=str(liked),
        lora_passes="positive",
        negative_lora=str(wrong),
        negative_lora_scale=0.75,
        steps=STEPS,
    )
    result = run_comparison(generator, store, request)
    assert result.status == "done"
    keys = [c.key for c in result.columns]
    assert keys == ["base", "negative", "lora", "lora_both", "two_loras"]
    lora, both, two = result.columns[2], result.columns[3], result.columns[4]
    # a liked LoRA keeps the prompt unchanged, as measured; the pair carries the token with the `wrong` LoRA
    assert (lora.with_token, both.with_token, two.with_token) == (False, False, True)
    assert lora.label == "LoRA 1 on positive pass" and both.label == "LoRA 1 on both passes"
    assert two.label == "LoRA 1 on positive pass + wrong 0.75 on negative pass"
    assert (two.lora_passes, two.negative_lora_path, two.negative_lora_scale) == ("positive", str(wrong), 0.75)

    cells = [_pixels(s.path) for s in result.cells[0]]
    # the pair equals a plain generation with both LoRAs, and differs from each LoRA alone
    (recipe,) = generator.plan(
        GenerateRequest(
            prompts=("a red circle",),
            seed=5,
            steps=STEPS,
            negative="wrong",
            lora=str(liked),
            lora_passes="positive",
            negative_lora=str(wrong),
            negative_lora_scale=0.75,
            guidance=request.guidance,
        )
    )
    ((_, direct),) = generator.render_many([recipe], 1)
    assert np.abs(cells[4] - np.asarray(direct.convert("RGB"), dtype=np.int16)).max() <= 1
    assert np.abs(cells[4] - cells[2]).max() > 5 and np.abs(cells[4] - cells[1]).max() > 5
    # the liked LoRA on the positive pass without the token is not the base image either
    assert np.abs(cells[2] - cells[0]).max() > 5

    # recipes and PNG metadata name both LoRAs
    meta = json.loads(Image.open(result.cells[0][4].path).text["negalora"])
    assert meta["lora"] == "kto" and meta["negative_lora"] == "wrong" and meta["negative_lora_scale"] == 0.75
    parsed = recipe_fields_from_parameters(Image.open(result.cells[0][4].path).text["parameters"])
    assert (parsed["lora"], parsed["negative_lora"], parsed["negative"]) == ("kto", "wrong", "wrong")
    assert parsed["negative_lora_scale"] == 0.75
    stored = store.comparison(result.id)
    assert stored["columns"][4]["negative_lora_path"] == str(wrong)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"lora_passes": "negative"}, "already on the negative pass"),
        ({"kind": "scale_sweep", "lora_passes": "positive"}, "three-way comparison's column"),
        ({"lora_passes": "positive", "negative_lora": "SAME"}, "the compared LoRA itself"),
        ({"lora_passes": "positive", "negative_lora": "/no/such.safetensors"}, "no such LoRA file"),
    ],
)
def test_bad_second_loras_fail_before_any_cell(generator, store, loras, kw, msg):
    liked, wrong = loras
    fields = {"negative_lora": str(wrong), **kw}
    if fields["negative_lora"] == "SAME":
        fields["negative_lora"] = str(liked)
    with pytest.raises(NegaloraError, match=msg):
        run_comparison(generator, store, CompareRequest(prompts=("a",), lora=str(liked), steps=STEPS, **fields))
    assert store.comparisons() == []


def _run(store, demo_model, run_id, config):
    store.create_run(run_id, None, json.dumps(config), 4)
    path = store.home.runs / run_id / "checkpoints" / "step-000010.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_demo_lora(demo_model.pipe, path, seed=len(run_id))
    store.add_checkpoint(run_id, 10, path, "0" * 64)


def test_a_liked_lora_is_compared_on_the_positive_pass_by_default(store, demo_model, loras, cli, home):
    liked, wrong = loras
    _run(store, demo_model, "kto-run", {"objective": "kto"})
    _run(store, demo_model, "picks-run", {"source": "picks", "token": "right"})
    _run(store, demo_model, "wrong-run", {"token": "wrong"})
    assert [liked_lora(store, r) for r in ("kto-run", "picks-run", "wrong-run")] == [True, True, False]
    assert (measured_passes(store, str(liked)), measured_passes(store, str(wrong))) == ("positive", "negative")
    assert after_training_request(store, "kto-run", lora_passes="negative").lora_passes == "positive"
    assert after_training_request(store, "wrong-run", lora_passes="negative").lora_passes == "negative"
    # a positive pass left on the page by a liked run is not a `wrong` run's after-training way
    assert after_training_request(store, "wrong-run", lora_passes="positive").lora_passes == "negative"
    # a run's own checkpoint file is judged by its run, not by metadata it does not carry
    assert liked_lora(store, store.checkpoints("kto-run")[0]["path"])
    assert not liked_lora(store, store.checkpoints("wrong-run")[0]["path"])

    # the CLI without --lora-passes: the liked run's columns on the positive pass, the prompt unchanged,
    # and a `wrong` run beside it by its id
    r = cli("compare", "a red circle", "--lora", "kto-run", "--negative-lora", "wrong-run", "--count", "1",
            "--steps", "2", "--home", home.root, "--json")  # fmt: skip
    assert r.code == 0, r.err
    columns = {c["key"]: c for c in r.json["columns"]}
    assert list(columns) == ["base", "negative", "lora", "lora_both", "two_loras"]
    assert columns["lora"]["lora_passes"] == "positive" and not columns["lora"]["with_token"]
    assert columns["two_loras"]["negative_lora_path"].endswith("wrong-run/checkpoints/step-000010.safetensors")
    assert columns["two_loras"]["negative_step"] == 10
    assert "wrong-run @10 1 on negative pass" in columns["two_loras"]["label"]
    # a liked LoRA's sweep keeps the prompt unchanged too
    r = cli("compare", "a", "--lora", "kto-run", "--scales", "0.5,1", "--count", "1", "--steps", "2",
            "--home", home.root, "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert [(c["lora_passes"], c["with_token"]) for c in r.json["columns"]] == [("positive", False)] * 2
    r = cli("compare", "a", "--lora", str(wrong), "--count", "1", "--steps", "2", "--home", home.root, "--json")
    assert r.code == 0, r.err
    assert r.json["columns"][2]["lora_passes"] == "negative" and r.json["columns"][2]["with_token"]


def test_the_compare_page_follows_the_measurement_and_asks_for_the_pair(qtbot, store, demo_model):
    from negalora.ui.app import make_app
    from negalora.ui.compare_page import NO_SECOND, ComparePage

    _run(store, demo_model, "kto-run", {"objective": "kto"})
    _run(store, demo_model, "wrong-run", {"token": "wrong"})
    make_app()
    page = ComparePage(store)
    qtbot.addWidget(page)
    # `wrong` runs are offered first for the negative pass
    assert [page.second.itemText(i) for i in range(page.second.count())] == [NO_SECOND, "wrong-run", "kto-run"]
    page.source.setCurrentIndex(page.source.findData("wrong-run"))
    assert page.passes.currentData() == "negative" and not page.second.isEnabled()
    page.source.setCurrentIndex(page.source.findData("kto-run"))
    assert page.passes.currentData() == "positive" and page.second.isEnabled()
    page.prompts.setPlainText("a red circle")
    assert page.request()["negative_lora"] == ""  # none chosen: no such column
    page.second.setCurrentText("wrong-run")
    page.second_scale.setValue(0.5)
    request = CompareRequest.from_dict(page.request())
    assert (request.lora, request.lora_passes, request.negative_lora, request.negative_lora_scale) == (
        "kto-run", "positive", "wrong-run", 0.5,
    )  # fmt: skip
    # the artist's own choice of passes stays until another run is chosen; kept across restarts
    page.passes.setCurrentIndex(page.passes.findData("both"))
    page.refresh()
    assert page.passes.currentData() == "both"
    again = ComparePage(store)
    qtbot.addWidget(again)
    again.restore(page.state())
    assert again.second.currentText() == "wrong-run" and again.second_scale.value() == 0.5
