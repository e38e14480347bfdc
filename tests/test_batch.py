"""A batch size everywhere the artist generates (as A1111's and ComfyUI's): consecutive images that
share their settings render in one pipeline call, each with its own seed and full recipe (batch size
and place recorded, A1111's infotext keys), within 2/255 of one-by-one renders; regenerate renders a
batch of the same size again; cancel, per-image progress and streaming keep working; the auto size
is chosen in one place from the device, the image size and the memory left."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from negalora.api import CompareRequest, GenerateRequest
from negalora.cancel import CancelToken
from negalora.compare.runner import run_comparison
from negalora.device import Placement, auto_batch_size
from negalora.generate import generate_to_store, regenerate
from negalora.pngmeta import parse_parameters
from negalora.store import Store
from negalora.wrong_set import wrong_set_requests

PROMPTS = tuple(f"a {c} circle on a blue background" for c in ("red", "green", "yellow", "white"))


def _px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_batch_keeps_each_images_seed_and_recipe_within_2_of_255(generator):
    request = GenerateRequest(prompts=PROMPTS, negative="wrong", seed=11, steps=6, guidance=3.0, batch_size=4)
    batch = list(generator.run(request))
    single = list(generator.run(replace(request, batch_size=1)))
    assert [r.batch_size for r, _ in batch] == [4, 4, 4, 4] and [r.batch_pos for r, _ in batch] == [0, 1, 2, 3]
    assert [r.batch_size for r, _ in single] == [1, 1, 1, 1]
    for (rb, b), (rs, s) in zip(batch, single, strict=True):
        assert (rb.seed, rb.prompt) == (rs.seed, rs.prompt)
        assert np.abs(_px(b) - _px(s)).max() <= 2
    # and they are four different images, not one four times
    assert len({_px(b).tobytes() for _, b in batch}) == 4


def test_a_batched_image_records_its_batch_and_regenerates_exactly(generator, home):
    store = Store(home)
    done = generate_to_store(generator, store, GenerateRequest(prompts=PROMPTS[:1], count=3, seed=2, steps=5))
    (stored, recipe) = done[1]
    assert (recipe.batch_size, recipe.batch_pos) == (3, 1)  # auto: the demo model's small images batch
    from PIL import Image

    with Image.open(stored.path) as im:
        params = parse_parameters(im.text["parameters"])["settings"]
    assert params["Batch size"] == "3" and params["Batch pos"] == "1"
    again = store.recipe(stored.id)
    assert again == recipe  # the store keeps the batch fields
    assert np.array_equal(_px(regenerate(generator, again)), _px(_open(stored.path)))
    store.close()


def _open(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def test_cli_regenerate_of_a_batched_image_says_what_it_was_held_to(cli, home):
    made = cli("generate", "a red circle", "--count", "3", "--seed", "4", "--steps", "4", "--batch-size", "3",
               "--home", home.root, "--json")  # fmt: skip
    assert made.code == 0, made.err
    image = made.json["images"][2]
    assert image["batch_size"] == 3
    out = cli("regenerate", image["id"], "--home", home.root, "--json")
    assert out.code == 0, out.err
    assert out.json["identical"] and out.json["matches"] and out.json["max_pixel_diff"] == 0
    assert out.json["held_to"] == "2/255 (made in a batch of 3)"
    one = cli("generate", "a red circle", "--seed", "9", "--steps", "4", "--batch-size", "1", "--home", home.root,
              "--json")  # fmt: skip
    again = cli("regenerate", one.json["images"][0]["id"], "--home", home.root, "--json")
    assert again.json["held_to"] == "identical pixels" and again.json["identical"]


def test_progress_streaming_and_cancel_in_batches(generator, home):
    store = Store(home)
    events, stored_when = [], []
    cancel = CancelToken()

    def on_progress(p):
        events.append((p.image_index, p.step, p.batch))
        if p.image_index == 4 and p.step == 2:
            cancel.cancel()  # in the third batch

    def on_image(stored, recipe):
        stored_when.append(store.counts()["all"])  # a batch is stored (one commit) as soon as it is made

    done = generate_to_store(
        generator,
        store,
        GenerateRequest(prompts=PROMPTS[:1], count=6, seed=1, steps=3, batch_size=2),
        on_progress=on_progress,
        cancel=cancel,
        on_image=on_image,
    )
    assert events[:4] == [(0, 0, 2), (0, 1, 2), (0, 2, 2), (0, 3, 2)]
    assert events[4:8] == [(2, 0, 2), (2, 1, 2), (2, 2, 2), (2, 3, 2)]
    assert events[-1] == (4, 2, 2)  # nothing ran after the step where cancel came
    assert len(done) == 4 and stored_when == [2, 2, 4, 4]  # the cancelled batch is thrown away whole
    assert store.counts()["all"] == 4
    store.close()


def test_make_wrong_renders_each_cfg_in_batches(generator, home):
    store = Store(home)
    requests = wrong_set_requests(20, seed=3, steps=2)  # CFG 8 for the first 14, then 9
    done = generate_to_store(generator, store, requests)
    sizes = [r.batch_size for _, r in done]
    assert sizes == [14] * 14 + [6] * 6
    assert [r.guidance for _, r in done] == [8.0] * 14 + [9.0] * 6
    assert [r.seed for _, r in done] == list(range(3, 23))
    store.close()


def test_prompts_of_different_lengths_split_the_batch(generator):
    long = "a red circle, " + ", ".join(["a blue background"] * 30)  # more than 77 tokens
    recipes = [r for r, _ in generator.run(GenerateRequest(prompts=("a red circle", long, "a cat"), steps=2))]
    assert [r.batch_size for r in recipes] == [1, 1, 1]


def test_a_comparison_renders_each_columns_cells_in_a_batch(generator, store, lora_file):
    request = CompareRequest(prompts=("a red circle", "a blue square"), seeds=(1, 2), lora=str(lora_file), steps=3)
    batched = run_comparison(generator, store, request)
    single = run_comparison(generator, store, replace(request, batch_size=1))
    cells = store.comparison(batched.id)["cells"]
    assert {json.loads(c["recipe"])["batch_size"] for c in cells} == {4}
    for row_b, row_s in zip(batched.cells, single.cells, strict=True):
        for b, s in zip(row_b, row_s, strict=True):
            assert np.abs(_px(_open(b.path)) - _px(_open(s.path))).max() <= 2


@pytest.mark.parametrize(
    "device, size, free, expected",
    [
        ("cpu", 1024, 24 << 30, 1),  # an SDXL image on the CPU: a batch would only delay the first image
        ("cpu", 256, 24 << 30, 4),
        ("cpu", 32, 24 << 30, 32),  # the demo model: the cap
        ("cuda", 1024, 80 << 30, 4),  # enough images to fill the GPU
        ("cuda", 1024, 4 << 30, 1),  # would not fit
        ("cuda", 512, 40 << 30, 16),
        ("cuda", 1024, None, 1),  # memory unknown
    ],
)
def test_the_auto_batch_size(device, size, free, expected):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    placement = Placement(torch.device(device), dtype, dtype)
    assert auto_batch_size(placement, size, size, 320, free=free) == expected


@pytest.fixture
def store(home):
    s = Store(home)
    yield s
    s.close()


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, demo_model):
    from helpers_lora import write_demo_lora

    return write_demo_lora(demo_model.pipe, tmp_path_factory.mktemp("lora") / "wrong.safetensors")


def test_the_generate_page_has_a_batch_size_that_its_requests_carry(qtbot):
    from negalora.ui.generate_page import GeneratePage

    page = GeneratePage()
    qtbot.addWidget(page)
    assert page.batch_size.currentText() == "auto" and page.build_request().batch_size is None
    page.batch_size.setCurrentIndex(page.batch_size.findData(4))
    assert page.build_request().batch_size == 4
    state = page.state()
    again = GeneratePage()
    qtbot.addWidget(again)
    again.restore(state)
    assert again.build_request().batch_size == 4
    again.restore({**state, "batch_size": None})
    assert again.build_request().batch_size is None


def test_a_full_disk_while_a_batch_is_written_stops_the_job_and_keeps_the_batches_before(generator, home):
    from negalora import faults
    from negalora.errors import DiskFull

    store = Store(home)
    seen = []
    faults.configure("db_commit=enospc@3")  # the model row, the first batch, then the second batch: full
    try:
        with pytest.raises(DiskFull, match="disk full"):
            generate_to_store(
                generator,
                store,
                GenerateRequest(prompts=PROMPTS[:1], count=8, seed=40, steps=2, batch_size=2),
                on_image=lambda stored, recipe: seen.append(stored.id),
            )
    finally:
        faults.configure("")
    assert len(seen) == 2 and store.counts()["all"] == 2  # the first batch, whole; nothing of the second
    assert store.db.execute("SELECT count(*) FROM generations").fetchone()[0] == 2
    assert len(list(home.images.rglob("*.png"))) == 2  # no file that no row knows
    store.close()


@pytest.mark.parametrize("size, pos", [(0, 0), (65, 0), (4, 4), (2, -1)])
def test_a_recipe_whose_batch_is_not_a_batch_is_refused(size, pos):
    from negalora.recipe import BadRecipe, Recipe

    good = Recipe("a", "", 1, 2, 7.0, 32, 32, "Euler", "demo", "ab" * 32, batch_size=4, batch_pos=3)
    assert Recipe.from_json(good.to_json()) == good
    data = {**json.loads(good.to_json()), "batch_size": size, "batch_pos": pos}
    with pytest.raises(BadRecipe, match="batch size"):
        Recipe.from_dict(data)
