"""img2img: re-render any image (a stored one or a file) through the same engine as text-to-image."""

import hashlib

import numpy as np
import pytest
import torch
from helpers_lora import write_demo_lora
from PIL import Image

from negalora.api import GenerateRequest
from negalora.cancel import CancelToken
from negalora.errors import Cancelled, NegaloraError
from negalora.generate import generate_to_store, regenerate, steps_run
from negalora.pngmeta import parse_parameters, read_recipe, recipe_fields_from_parameters
from negalora.recipe import BadRecipe, Recipe
from negalora.schedulers import SCHEDULERS
from negalora.store import Store

PROMPT = "a red circle on a blue background"


def _px(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _open(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


@pytest.fixture
def source(generator, home):
    """A stored text-to-image render to re-render: (store, its id, its path)."""
    store = Store(home)
    (stored, _), *_ = generate_to_store(
        generator, store, GenerateRequest(prompts=(PROMPT,), seed=3, steps=8, guidance=3)
    )
    yield store, stored.id, stored.path
    store.close()


def _rerender(generator, store, source_id, strength, **kw):
    request = GenerateRequest(prompts=("",), init_image=str(source_id), strength=strength, steps=10, guidance=3, **kw)
    return generate_to_store(generator, store, request)


def test_pixels_move_away_from_the_source_with_strength_and_repeat_exactly(generator, source):
    store, source_id, path = source
    original = _px(_open(path))
    moved = {}
    for strength in (0.2, 0.5, 0.9):
        (stored, recipe), *_ = _rerender(generator, store, source_id, strength, seed=11)
        assert recipe.strength == strength and recipe.init_image == hashlib.sha256(path.read_bytes()).hexdigest()
        assert recipe.prompt == PROMPT  # an empty prompt takes the source's own
        moved[strength] = np.abs(_px(_open(stored.path)) - original).mean()
    assert 0 < moved[0.2] < moved[0.5] < moved[0.9]
    request = GenerateRequest(prompts=("",), init_image=str(source_id), strength=0.5, steps=10, guidance=3, seed=11)
    from negalora.generate import with_init_image

    recipe = generator.plan(with_init_image(store, request))[0]
    assert np.array_equal(_px(generator.render(recipe)), _px(generator.render(recipe)))


def test_it_is_diffusers_img2img_on_the_loaded_components(generator, source):
    store, source_id, path = source
    from diffusers import StableDiffusionXLImg2ImgPipeline

    (stored, recipe), *_ = _rerender(generator, store, source_id, 0.6, seed=5, negative="wrong")
    pipe = generator.model.pipe
    i2i = generator._img2img_pipe()
    assert all(getattr(i2i, name) is getattr(pipe, name) for name in ("unet", "vae", "text_encoder", "text_encoder_2"))
    direct = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    direct.scheduler = generator._scheduler(recipe.scheduler)
    out = direct(
        prompt=PROMPT,
        negative_prompt="wrong",
        image=_open(path),
        strength=0.6,
        num_inference_steps=10,
        guidance_scale=3,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    assert np.abs(_px(_open(stored.path)) - _px(out)).max() == 0


def test_regenerate_is_exact_alone_and_in_a_batch(generator, source, cli, home):
    store, source_id, _ = source
    alone = _rerender(generator, store, source_id, 0.5, seed=1, batch_size=1)
    batched = _rerender(generator, store, source_id, 0.5, seed=20, count=3, batch_size=3)
    for stored, recipe in (alone[0], batched[2]):
        again = store.recipe(stored.id)
        assert again == recipe
        fresh = type(generator)(generator.model)  # holds no init image: regenerate finds it in the store
        assert np.array_equal(_px(regenerate(fresh, again, store)), _px(_open(stored.path)))
    out = cli("regenerate", batched[1][0].id, "--home", home.root, "--json")
    assert out.code == 0, out.err
    assert out.json["identical"] and out.json["matches"]


def test_strength_and_init_hash_round_trip_through_the_png(generator, source):
    store, source_id, _ = source
    (stored, recipe), *_ = _rerender(generator, store, source_id, 0.35, seed=2)
    with Image.open(stored.path) as im:
        assert read_recipe(im) == recipe
        text = im.text["parameters"]
    settings = parse_parameters(text)["settings"]
    assert settings["Denoising strength"] == "0.35"  # A1111's img2img key
    assert settings["Init image hash"] == recipe.init_image[:10]
    fields = recipe_fields_from_parameters(text)
    assert fields["strength"] == 0.35 and fields["init_image"] == recipe.init_image[:10]
    plain = generator.plan(GenerateRequest(prompts=(PROMPT,), seed=1))[0]
    from negalora.pngmeta import format_parameters

    assert "Denoising strength" not in format_parameters(plain) and plain.strength == 0.0


def test_a_file_is_checked_stored_and_linked(generator, home, tmp_path):
    rgba = Image.new("RGBA", (37, 29), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # transparency: flattened onto white, as training images
    path = tmp_path / "mine.png"
    rgba.save(path)
    with Store(home) as store:
        done = generate_to_store(
            generator,
            store,
            GenerateRequest(prompts=(PROMPT,), init_image=str(path), strength=0.5, steps=6, seed=4),
        )
        stored, recipe = done[0]
        assert (recipe.width, recipe.height) == (32, 24)  # the file's size, in whole multiples of 8
        source = store.image_by_sha(recipe.init_image)
        assert source is not None and source["source"] == "imported" and source["original_name"] == "mine.png"
        assert store.source_of(stored.id) == source["id"]
        with pytest.raises(NegaloraError, match="no prompt of its own"):
            generate_to_store(
                generator, store, GenerateRequest(prompts=("",), init_image=str(source["id"]), strength=0.5)
            )


def test_a_bad_init_file_is_refused_with_its_reason_and_nothing_is_written(cli, home, tmp_path):
    made = cli("generate", PROMPT, "--steps", "4", "--home", home.root, "--json")
    assert made.code == 0, made.err
    files_before = sorted(p for p in home.images.rglob("*") if p.is_file())
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"%PDF-1.4 not an image")
    out = cli("generate", PROMPT, "--init-image", bad, "--home", home.root)
    assert out.code == 2
    assert str(bad) in out.err and "refused as an init image" in out.err and "PDF" in out.err
    with Store(home) as store:
        assert [r["id"] for r in store.images()] == [made.json["images"][0]["id"]]
    assert sorted(p for p in home.images.rglob("*") if p.is_file()) == files_before
    gone = cli("generate", "--init-image", "99", "--home", home.root)
    assert gone.code == 2 and "99" in gone.err


def test_strength_is_checked_before_anything_loads(cli, home):
    for strength, why in (("0", "above 0"), ("1.5", "at most 1"), ("0.02", "re-runs no step")):
        out = cli("generate", "x", "--init-image", "1", "--strength", strength, "--home", home.root)
        assert out.code == 2 and why in out.err, out.err
    assert not home.db_path.exists()
    with pytest.raises(BadRecipe, match="strength"):
        Recipe.from_dict({**_recipe_fields(), "init_image": "ab" * 32, "strength": 0.0})


def _recipe_fields() -> dict:
    return dict(prompt="p", negative="", seed=1, steps=4, guidance=3.0, width=32, height=32, scheduler="Euler",
                model="demo", model_hash="ab" * 32)  # fmt: skip


def test_progress_counts_the_steps_run_and_cancel_stops_within_one(generator, source):
    store, source_id, _ = source
    events, cancel = [], CancelToken()

    def on_progress(p):
        events.append((p.step, p.steps))
        if p.step == 2:
            cancel.cancel()

    request = GenerateRequest(prompts=("",), init_image=str(source_id), strength=0.5, steps=10, seed=1)
    done = generate_to_store(generator, store, request, on_progress=on_progress, cancel=cancel)
    assert done == [] and events[0] == (0, 5) and events[-1] == (2, 5)  # int(10 x 0.5) steps, stopped at 2
    recipe = Recipe(**_recipe_fields(), init_image="cd" * 32, strength=0.5)
    assert steps_run(recipe) == 2 and steps_run(Recipe(**_recipe_fields())) == 4
    with pytest.raises(NegaloraError, match="not loaded"):
        generator.render(recipe)
    with pytest.raises(Cancelled):
        generator.render(generator.plan(GenerateRequest(prompts=(PROMPT,), seed=1))[0], cancel=cancel)


def test_the_lora_on_the_negative_pass_changes_a_re_render_and_is_recorded(generator, source, tmp_path):
    store, source_id, _ = source
    lora = write_demo_lora(generator.model.pipe, tmp_path / "wrong.safetensors")
    (plain, _), *_ = _rerender(generator, store, source_id, 0.7, seed=8, negative="wrong")
    (with_lora, recipe), *_ = _rerender(
        generator, store, source_id, 0.7, seed=8, negative="wrong", lora=str(lora), lora_passes="negative"
    )
    assert recipe.lora_passes == "negative" and recipe.lora_hash and recipe.init_image
    assert np.abs(_px(_open(plain.path)) - _px(_open(with_lora.path))).max() > 0


def test_a_comparison_re_renders_the_same_image_in_every_column(generator, source, tmp_path):
    from negalora.api import CompareRequest
    from negalora.compare.runner import run_comparison

    store, source_id, path = source
    lora = write_demo_lora(generator.model.pipe, tmp_path / "wrong.safetensors")
    request = CompareRequest(init_images=(str(source_id),), seeds=(1, 2), lora=str(lora), strength=0.6, steps=10)
    result = run_comparison(generator, store, request)
    assert result.status == "done" and result.rows == [(PROMPT, 1), (PROMPT, 2)]  # the image's own prompt
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    for row in result.recipes:
        assert {(r.init_image, r.strength) for r in row} == {(sha, 0.6)}
    first_row = [_px(_open(cell.path)) for cell in result.cells[0]]
    assert np.abs(first_row[0] - first_row[2]).max() > 0  # base and LoRA columns differ
    assert all(store.source_of(cell.id) == source_id for row in result.cells for cell in row if cell)
    with pytest.raises(NegaloraError, match="one prompt"):
        run_comparison(
            generator, store, CompareRequest(prompts=("a", "b"), init_images=(str(source_id),), lora=str(lora))
        )


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_sampler_re_renders(generator, source, scheduler):
    store, source_id, path = source
    (stored, recipe), *_ = _rerender(generator, store, source_id, 0.5, seed=3, scheduler=scheduler)
    assert recipe.scheduler == scheduler
    assert np.abs(_px(_open(stored.path)) - _px(_open(path))).mean() > 0


def test_the_negative_pass_re_render_works_on_a_model_that_never_rendered_from_noise(tmp_path, source):
    from negalora.device import choose_placement
    from negalora.generate import Generator
    from negalora.models.loader import load_model

    store, source_id, _ = source
    fresh = Generator(load_model("demo", store.home, choose_placement("cpu")))  # its pipeline never called
    lora = write_demo_lora(fresh.model.pipe, tmp_path / "wrong.safetensors")
    request = GenerateRequest(
        prompts=("",), init_image=str(source_id), strength=0.5, steps=6, guidance=3, lora=str(lora), seed=1
    )
    (stored, recipe), *_ = generate_to_store(fresh, store, request)
    assert recipe.lora_passes == "negative" and stored.path.is_file()


def test_a_large_init_image_renders_at_the_models_area_in_its_shape():
    from negalora.generate import init_size

    assert init_size(4000, 3000, 1024) == (1176, 880)  # 1.03 MP, 4:3
    assert init_size(800, 600, 1024) == (800, 600)  # smaller: its own size
    assert init_size(37, 29, 32) == (32, 24)
    assert init_size(5, 5, 32) == (8, 8)
