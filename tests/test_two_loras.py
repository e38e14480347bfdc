"""A LoRA on the positive pass, and two LoRAs at once, one per guidance pass: checked against an
oracle that sends each half of the UNet batch to its own copy of the model."""

import copy

import numpy as np
import pytest
import torch
from helpers_lora import write_demo_lora
from PIL import Image

from negalora.api import GenerateRequest
from negalora.device import choose_placement
from negalora.generate import Generator, generate_to_store, regenerate
from negalora.home import Home
from negalora.models.loader import load_model
from negalora.pngmeta import parse_parameters, read_recipe, recipe_fields_from_parameters
from negalora.store import Store

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A fresh model (no LoRA ever loaded), two LoRA files, and a copy of the pipeline per LoRA."""
    root = tmp_path_factory.mktemp("two")
    model = load_model("demo", Home(root / "home"), choose_placement("cpu"))
    right = write_demo_lora(model.pipe, root / "right.safetensors", seed=1)
    wrong = write_demo_lora(model.pipe, root / "wrong.safetensors", seed=2)
    copies = {"base": copy.deepcopy(model.pipe)}  # the renders below load LoRAs into model.pipe
    for name, path in (("right", right), ("wrong", wrong)):
        pipe = copy.deepcopy(model.pipe)
        pipe.load_lora_weights(str(path), adapter_name=name)
        copies[name] = pipe
    model.generator = Generator(model)  # one per model, as the app keeps it (it knows what it loaded)
    return model, {"right": right, "wrong": wrong}, copies


def _oracle(model, negative_unet, positive_unet, **call) -> np.ndarray:
    """The plain pipeline with each half of its [negative; positive] UNet batch sent to its own UNet."""
    pipe = copy.deepcopy(model.pipe)
    if hasattr(pipe.unet, "peft_config"):
        pipe.unload_lora_weights()

    def half(x, n, second):
        if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == 2 * n:
            return x[n:] if second else x[:n]
        if isinstance(x, dict):
            return {k: half(v, n, second) for k, v in x.items()}
        return x

    def forward(sample, *args, **kwargs):
        n = sample.shape[0] // 2
        neg = negative_unet(half(sample, n, False), *[half(a, n, False) for a in args], **half(kwargs, n, False))
        pos = positive_unet(half(sample, n, True), *[half(a, n, True) for a in args], **half(kwargs, n, True))
        if isinstance(neg, tuple):
            return (torch.cat([neg[0], pos[0]]),)
        neg.sample = torch.cat([neg.sample, pos.sample])
        return neg

    pipe.unet.forward = forward
    image = pipe(**call, generator=torch.Generator("cpu").manual_seed(call.pop("seed", 0) or 4)).images[0]
    return np.asarray(image, dtype=np.int16)


def _render(model, **request) -> np.ndarray:
    gen = model.generator
    (recipe,) = gen.plan(GenerateRequest(prompts=(PROMPT,), negative="wrong", seed=4, steps=5, guidance=4, **request))
    return np.asarray(gen.render(recipe), dtype=np.int16), recipe


CALL = dict(prompt=PROMPT, negative_prompt="wrong", num_inference_steps=5, guidance_scale=4, width=32, height=32)


def test_a_lora_on_the_positive_pass_only(world):
    model, files, copies = world
    ours, recipe = _render(model, lora=str(files["right"]), lora_passes="positive")
    assert recipe.lora_passes == "positive"
    oracle = _oracle(model, copies["base"].unet, copies["right"].unet, **CALL)
    assert np.abs(ours - oracle).max() == 0
    both, _ = _render(model, lora=str(files["right"]), lora_passes="both")
    negative, _ = _render(model, lora=str(files["right"]), lora_passes="negative")
    assert np.abs(ours - both).max() > 0 and np.abs(ours - negative).max() > 0


def test_two_loras_one_per_pass(world):
    model, files, copies = world
    ours, recipe = _render(model, lora=str(files["right"]), lora_passes="positive", negative_lora=str(files["wrong"]))
    assert (
        recipe.negative_lora == "wrong" and recipe.negative_lora_hash and recipe.lora_hash != recipe.negative_lora_hash
    )
    oracle = _oracle(model, copies["wrong"].unet, copies["right"].unet, **CALL)
    assert np.abs(ours - oracle).max() == 0
    alone, _ = _render(model, negative_lora=str(files["wrong"]))  # the negative one alone: today's way
    only_wrong = _oracle(model, copies["wrong"].unet, copies["base"].unet, **CALL)
    assert np.abs(alone - only_wrong).max() == 0


def test_both_loras_are_recorded_and_regenerate_exactly(world, tmp_path):
    model, files, _ = world
    home = Home(tmp_path / "h")
    with Store(home) as store:
        request = GenerateRequest(
            prompts=(PROMPT,),
            seed=9,
            steps=4,
            guidance=4,
            lora=str(files["right"]),
            lora_passes="positive",
            negative_lora=str(files["wrong"]),
            negative_lora_scale=0.75,
        )
        (stored, recipe), *_ = generate_to_store(model.generator, store, request)
        with Image.open(stored.path) as im:
            assert read_recipe(im) == recipe
            text = im.text["parameters"]
            kept = np.asarray(im.convert("RGB"), dtype=np.int16)
        settings = parse_parameters(text)["settings"]
        assert settings["Lora passes"] == "positive" and settings["Negative pass lora"] == "wrong:0.75"
        fields = recipe_fields_from_parameters(text)
        assert fields["lora"] == "right" and fields["lora_hash"] == recipe.lora_hash[:12]
        assert fields["negative_lora_hash"] == recipe.negative_lora_hash[:12] and fields["negative_lora_scale"] == 0.75
        again = regenerate(model.generator, store.recipe(stored.id), store)
        assert np.array_equal(np.asarray(again, dtype=np.int16), kept)


def test_a_second_generator_on_the_same_pipe_takes_over_the_adapters_left_behind(world):
    model, files, copies = world
    pair = dict(lora=str(files["right"]), lora_passes="positive", negative_lora=str(files["wrong"]))
    first, _ = _render(model, **pair)
    other = Generator(model)  # a page's or a worker's own, on the pipe the first one loaded its LoRAs into
    (recipe,) = other.plan(GenerateRequest(prompts=(PROMPT,), negative="wrong", seed=4, steps=5, guidance=4,
                                           lora=str(files["wrong"]), lora_passes="positive"))  # fmt: skip
    ours = np.asarray(other.render(recipe), dtype=np.int16)  # before: "adapter name already in use"
    assert np.abs(ours - _oracle(model, copies["base"].unet, copies["wrong"].unet, **CALL)).max() == 0
    # the first one knows its LoRAs were replaced: the same recipe again loads them again
    again, _ = _render(model, **pair)
    assert np.abs(again - first).max() == 0
    other.release_lora()  # takes off what any Generator left: training starts from the bare model
    assert not any(model.pipe.get_list_adapters().values())
    model.generator.release_lora()
