from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers_lora import write_demo_lora

from negalora.cancel import CancelToken
from negalora.errors import NegaloraError
from negalora.generate import GenerateRequest, Progress, generate_to_store
from negalora.models.demo import DEMO_SIZE
from negalora.schedulers import SCHEDULERS
from negalora.store import Store


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_batch_expands_prompts_times_count_with_consecutive_seeds(generator):
    recipes = generator.plan(GenerateRequest(prompts=("a red circle", "a blue square"), count=3, seed=10))
    assert [r.prompt for r in recipes] == ["a red circle"] * 3 + ["a blue square"] * 3
    assert [r.seed for r in recipes] == [10, 11, 12, 13, 14, 15]
    assert {(r.width, r.height) for r in recipes} == {(DEMO_SIZE, DEMO_SIZE)}  # the demo's native size


def test_random_seed_is_drawn_and_recorded(generator):
    a = generator.plan(GenerateRequest(prompts=("x",), count=2))
    b = generator.plan(GenerateRequest(prompts=("x",), count=2))
    assert a[1].seed == a[0].seed + 1
    assert a[0].seed != b[0].seed


def test_render_equals_a_direct_diffusers_call(generator):
    recipe = generator.plan(GenerateRequest(prompts=("a red circle",), negative="wrong", seed=7, steps=6))[0]
    ours = _pixels(generator.render(recipe))
    pipe = generator.model.pipe
    direct = pipe(
        prompt="a red circle",
        negative_prompt="wrong",
        num_inference_steps=6,
        guidance_scale=7.0,
        width=DEMO_SIZE,
        height=DEMO_SIZE,
        generator=torch.Generator("cpu").manual_seed(7),
    ).images[0]
    assert np.abs(ours - _pixels(direct)).max() == 0


def test_progress_per_step_and_per_image(generator):
    events: list[Progress] = []
    request = GenerateRequest(prompts=("a",), count=2, seed=1, steps=4, batch_size=1)
    list(generator.run(request, on_progress=events.append))
    assert [(e.image_index, e.step) for e in events] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (1, 0),
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
    ]
    assert all(e.image_total == 2 and e.steps == 4 for e in events)


def test_cancel_within_one_step_stores_nothing_partial(generator, home):
    store = Store(home)
    cancel = CancelToken()
    steps_seen = []

    def on_progress(p):
        steps_seen.append((p.image_index, p.step))
        if p.image_index == 1 and p.step == 3:
            cancel.cancel()

    done = generate_to_store(
        generator,
        store,
        GenerateRequest(prompts=("a",), count=3, seed=5, steps=10, batch_size=1),
        on_progress=on_progress,
        cancel=cancel,
    )
    assert len(done) == 1  # the first image finished; the cancelled one is thrown away
    assert steps_seen[-1] == (1, 3)  # nothing ran after the step where cancel came
    assert store.counts()["all"] == 1
    assert len(list((home.images).rglob("*.png"))) == 1


def test_every_scheduler_runs_and_they_differ(generator):
    images = {}
    for name in SCHEDULERS:
        recipe = generator.plan(GenerateRequest(prompts=("a red circle",), seed=3, steps=5, scheduler=name))[0]
        images[name] = _pixels(generator.render(recipe))
    assert not np.array_equal(images["Euler"], images["Euler a"])
    assert not np.array_equal(images["DPM++ 2M"], images["DPM++ 2M Karras"])
    assert not np.array_equal(images["Euler"], images["DDIM"])


def test_scheduler_names_are_forgiving_and_checked(generator):
    assert (
        generator.plan(GenerateRequest(prompts=("a",), scheduler="dpm++_2m_karras"))[0].scheduler == "DPM++ 2M Karras"
    )
    with pytest.raises(NegaloraError, match="unknown scheduler"):
        generator.plan(GenerateRequest(prompts=("a",), scheduler="nope"))


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"count": 0}, "count 0"),
        ({"count": -2}, "count -2"),
        ({"width": 60, "height": 64}, "multiple of 8"),
        ({"steps": 0}, "steps 0"),
        ({"seed": -1}, "seed -1"),
    ],
)
def test_bad_requests_are_refused(generator, kw, msg):
    with pytest.raises(NegaloraError, match=msg):
        generator.plan(GenerateRequest(prompts=("a",), **kw))


def test_non_square_size(generator):
    recipe = generator.plan(GenerateRequest(prompts=("a",), seed=1, steps=3, width=96, height=48))[0]
    assert generator.render(recipe).size == (96, 48)


def test_lora_changes_output_and_scale_zero_is_base(generator, tmp_path):
    lora = write_demo_lora(generator.model.pipe, tmp_path / "wrong.safetensors")
    base_r = generator.plan(GenerateRequest(prompts=("a red circle",), seed=9, steps=5))[0]
    base = _pixels(generator.render(base_r))
    with_lora_r = generator.plan(
        GenerateRequest(prompts=("a red circle",), seed=9, steps=5, lora=str(lora), lora_scale=1.0)
    )[0]
    assert with_lora_r.lora == "wrong" and len(with_lora_r.lora_hash) == 64
    with_lora = _pixels(generator.render(with_lora_r))
    zero_r = generator.plan(
        GenerateRequest(prompts=("a red circle",), seed=9, steps=5, lora=str(lora), lora_scale=0.0)
    )[0]
    zero = _pixels(generator.render(zero_r))
    assert np.abs(with_lora - base).max() > 10
    assert np.abs(zero - base).max() <= 1
    # and back to no LoRA: the adapter is gone
    assert np.array_equal(_pixels(generator.render(base_r)), base)


def test_a_model_file_given_as_lora_is_refused(generator, demo_model, tmp_path):
    from safetensors.torch import save_file

    fake = tmp_path / "model.safetensors"
    save_file({"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(2)}, str(fake))
    with pytest.raises(NegaloraError, match="not a LoRA"):
        generator.plan(GenerateRequest(prompts=("a",), lora=str(fake)))


def test_a_batch_renders_each_seed_as_a_single_render_does(generator):
    recipes = generator.plan(
        GenerateRequest(prompts=("a red circle", "a blue square on a white background"), count=2, seed=40, steps=4)
    )
    batch = generator.render_batch(recipes)
    assert len(batch) == 4
    for recipe, image in zip(recipes, batch, strict=True):
        single = _pixels(generator.render(recipe))
        assert np.abs(_pixels(image) - single).max() <= 2  # same noise; only the last bits may differ (2/255)
    assert np.abs(_pixels(batch[0]) - _pixels(batch[1])).max() > 5  # each image its own seed
    mixed = [recipes[0], generator.plan(GenerateRequest(prompts=("a",), steps=5))[0]]
    with pytest.raises(NegaloraError, match="differ: steps"):
        generator.render_batch(mixed)


def test_a_batch_splits_the_guidance_passes_per_image_for_a_negative_pass_lora(generator, tmp_path):
    lora = write_demo_lora(generator.model.pipe, tmp_path / "w.safetensors")
    request = GenerateRequest(
        prompts=("a red circle", "a blue square"), count=2, seed=70, steps=4, negative="wrong", lora=str(lora)
    )
    recipes = generator.plan(request)
    assert {r.lora_passes for r in recipes} == {"negative"}  # the default
    try:
        batch = generator.render_batch(recipes)
        for recipe, image in zip(recipes, batch, strict=True):  # [negatives; positives] split for all four
            assert np.abs(_pixels(image) - _pixels(generator.render(recipe))).max() <= 2
        both = generator.render_batch([replace(r, lora_passes="both") for r in recipes])
        assert all(np.abs(_pixels(a) - _pixels(b)).max() > 5 for a, b in zip(batch, both, strict=True))
    finally:
        generator.release_lora()
