"""What the artist sees while and right after training shows the LoRA the product's default way: the
validation images and the automatic comparison put the LoRA on the negative pass, at the CFG of the
model's default test set, and on the demo model that set is the demo world's own captions."""

from pathlib import Path

import pytest
from PIL import Image

from negalora.compare import prompt_sets
from negalora.compare.runner import after_training_request, run_comparison
from negalora.demo_world.classify import classify, parse_caption
from negalora.demo_world.efficacy import DEMO_RECIPE, EfficacyConfig, run_session
from negalora.store import Store
from negalora.train.config import TrainConfig
from negalora.train.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory, generator):
    """A session on the demo model with the detectors as the artist, and a run of the default recipe."""
    from negalora.home import Home

    home = Home(tmp_path_factory.mktemp("validation-home"))
    store = Store(home)
    generator.release_lora()
    session = run_session(generator, store, EfficacyConfig(session_images=160))
    assert session["rejected"] >= 8
    events = []
    trainer = Trainer(home, store, generator.model, on_event=events.append)
    config = TrainConfig(**{**DEMO_RECIPE, "steps": 300}, checkpoint_every=300, validation_steps=20, seed=5)
    result = trainer.start(config)
    assert result.status == "done", result.message
    yield store, result.run_id, [e for e in events if e["type"] == "validation"]
    store.close()


def _colour_right(image, prompt: str) -> bool:
    return classify(image).colour == parse_caption(prompt).colour


@pytest.mark.slow
def test_validation_images_use_the_negative_pass_at_the_demo_sets_cfg_and_keep_the_prompts_colour(trained):
    _, run_id, validations = trained
    (event,) = validations
    assert event["passes"] == "negative" and event["guidance"] == prompt_sets.DEMO_GUIDANCE == 3.0
    for path, prompt in zip(event["paths"], event["prompts"], strict=True):
        assert Path(path).parent.name == "samples" and run_id in path
        with Image.open(path) as im:
            assert _colour_right(im.convert("RGB"), prompt), (path, prompt, classify(im.convert("RGB")))


def test_the_comparison_after_training_draws_the_worlds_captions_the_default_way(trained, generator):
    store, run_id, _ = trained
    request = after_training_request(store, run_id)
    assert request.prompt_set == prompt_sets.DEMO_SET
    result = run_comparison(generator, store, request)
    generator.release_lora()
    assert result.status == "done"
    comparison = store.comparison(result.id)
    assert comparison["config"]["guidance"] == 3.0  # the set's CFG, the one the efficacy was measured at
    assert [p for p, _ in result.rows] == [p for p in prompt_sets.DEMO_PROMPTS for _ in prompt_sets.DEFAULT_SEEDS]
    col = next(i for i, c in enumerate(result.columns) if c.key == "lora")
    assert result.columns[col].lora_passes == "negative"
    right = 0
    for (prompt, _), row in zip(result.rows, result.cells, strict=True):
        with Image.open(row[col].path) as im:
            right += _colour_right(im.convert("RGB"), prompt)
    assert right == len(result.rows)


def test_the_default_set_fits_the_model():
    assert prompt_sets.default_set_name("demo") == prompt_sets.DEMO_SET
    assert prompt_sets.default_set_name("file") == prompt_sets.DEFAULT_SET
    for prompt in prompt_sets.DEMO_PROMPTS:
        parse_caption(prompt)  # every one a caption the demo world draws
    assert prompt_sets.default_guidance("demo") == 3.0 and prompt_sets.default_guidance("folder") == 7.0


def test_the_built_in_sets_are_there_when_a_command_names_them(home):
    from negalora.compare.runner import CompareRequest, fill_from_prompt_set

    store = Store(home)
    try:
        filled = fill_from_prompt_set(store, CompareRequest(prompt_set=prompt_sets.DEMO_SET, lora="x"))
        assert filled.prompts == prompt_sets.DEMO_PROMPTS and filled.guidance == 3.0
        assert fill_from_prompt_set(store, CompareRequest(prompt_set="default")).prompts == prompt_sets.DEFAULT_PROMPTS
        with pytest.raises(Exception, match="no such set"):
            fill_from_prompt_set(store, CompareRequest(prompt_set="mine"))
    finally:
        store.close()
