"""Comparisons: exact columns, the labelled grid, sweeps, the negative-pass-only LoRA, votes."""

import json
import random

import numpy as np
import pytest
import torch
from helpers_lora import write_demo_lora
from PIL import Image

from negalora.cancel import CancelToken
from negalora.compare.runner import CompareRequest, resolve_lora, run_comparison
from negalora.compare.votes import VotePair, vote_pairs, wilson_interval, win_rates
from negalora.errors import NegaloraError
from negalora.models.demo import DEMO_SIZE
from negalora.pngmeta import parse_parameters
from negalora.schedulers import make_scheduler
from negalora.store import Store

STEPS = 5


def _pixels(path_or_image):
    image = Image.open(path_or_image) if not isinstance(path_or_image, Image.Image) else path_or_image
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def fresh_model(tmp_path_factory):
    """A second copy of the demo model for direct diffusers calls, untouched by the generator."""
    from negalora.device import choose_placement
    from negalora.home import Home
    from negalora.models.loader import load_model

    return load_model("demo", Home(tmp_path_factory.mktemp("fresh")), choose_placement("cpu"))


@pytest.fixture
def unused_generator(tmp_path):
    """A generator on a model no LoRA has touched in this process: a LoRA loaded and unloaded again
    leaves weights and modules identical, yet can move a matmul's last bit (1/255 in a rare pixel)."""
    from negalora.device import choose_placement
    from negalora.generate import Generator
    from negalora.home import Home
    from negalora.models.loader import load_model

    return Generator(load_model("demo", Home(tmp_path / "unused"), choose_placement("cpu")))


@pytest.fixture(scope="module")
def lora_file(fresh_model, tmp_path_factory):
    return write_demo_lora(fresh_model.pipe, tmp_path_factory.mktemp("lora") / "wrong.safetensors")


@pytest.fixture
def store(home):
    s = Store(home)
    yield s
    s.close()


def _direct(pipe, prompt, negative, seed, scheduler_config):
    pipe.scheduler = make_scheduler("Euler", scheduler_config)
    return pipe(
        prompt=prompt,
        negative_prompt=negative,
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        width=DEMO_SIZE,
        height=DEMO_SIZE,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]


def test_three_way_columns_equal_direct_diffusers_calls(unused_generator, store, fresh_model, lora_file):
    result = run_comparison(
        unused_generator,
        store,
        CompareRequest(
            prompts=("a red circle",),
            seeds=(3, 4),
            lora=str(lora_file),
            scale=0.75,
            steps=STEPS,
            lora_passes="both",
            batch_size=1,  # one cell per call, as the direct calls below: the same pixels exactly
        ),
    )
    assert result.status == "done"
    assert [c.key for c in result.columns] == ["base", "negative", "lora", "lora_negative"]
    pipe, config = fresh_model.pipe, fresh_model.scheduler_config
    # The plain direct calls first: after a LoRA load and unload, the pipe's own matmuls can take
    # another kernel path and differ in the last bit (weights and modules stay identical).
    plain = {
        (seed, neg): _pixels(_direct(pipe, "a red circle", neg, seed, config))
        for seed in (3, 4)
        for neg in (None, "wrong")
    }
    for r, seed in enumerate((3, 4)):
        cells = [_pixels(s.path) for s in result.cells[r]]
        assert np.array_equal(cells[0], plain[(seed, None)])
        assert np.array_equal(cells[1], plain[(seed, "wrong")])
        pipe.load_lora_weights(str(lora_file), adapter_name="direct")
        pipe.set_adapters(["direct"], adapter_weights=[0.75])
        try:
            with_lora = _pixels(_direct(pipe, "a red circle", "wrong", seed, config))
        finally:
            pipe.unload_lora_weights()
        assert np.abs(cells[2] - with_lora).max() <= 1
        # the columns really differ, only by what they state
        assert np.abs(cells[0] - cells[1]).max() > 5 and np.abs(cells[1] - cells[2]).max() > 5
        assert np.abs(cells[2] - cells[3]).max() > 5


def _reference_negative_pass(model, lora_file, prompt, negative, seed, scale):
    """A hand-written Euler loop: UNet with the LoRA on the negative pass, without it on the positive."""
    from diffusers.utils.torch_utils import randn_tensor

    pipe = model.pipe
    pipe.load_lora_weights(str(lora_file), adapter_name="ref")
    try:
        sched = make_scheduler("Euler", model.scheduler_config)
        sched.set_timesteps(STEPS)
        with torch.no_grad():
            pe, ne, pp, npool = pipe.encode_prompt(prompt, negative_prompt=negative, device="cpu")
            f = pipe.vae_scale_factor
            shape = (1, pipe.unet.config.in_channels, DEMO_SIZE // f, DEMO_SIZE // f)
            latents = randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=pe.dtype)
            latents = latents * sched.init_noise_sigma
            time_ids = torch.tensor([[DEMO_SIZE, DEMO_SIZE, 0, 0, DEMO_SIZE, DEMO_SIZE]], dtype=pe.dtype)
            for t in sched.timesteps:
                x = sched.scale_model_input(latents, t)
                pipe.set_adapters(["ref"], adapter_weights=[scale])
                uncond = pipe.unet(x, t, ne, added_cond_kwargs={"text_embeds": npool, "time_ids": time_ids}).sample
                pipe.set_adapters(["ref"], adapter_weights=[0.0])
                cond = pipe.unet(x, t, pe, added_cond_kwargs={"text_embeds": pp, "time_ids": time_ids}).sample
                latents = sched.step(uncond + 7.0 * (cond - uncond), t, latents).prev_sample
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    finally:
        pipe.unload_lora_weights()
    array = (image[0].permute(1, 2, 0).float().numpy() / 2 + 0.5).clip(0, 1)
    return (array * 255).round().astype(np.int16)


def test_negative_pass_column_matches_a_hand_written_guidance_loop(generator, store, fresh_model, lora_file):
    result = run_comparison(
        generator,
        store,
        CompareRequest(
            prompts=("a blue square",), seeds=(11,), lora=str(lora_file), scale=1.0, steps=STEPS, lora_passes="both"
        ),
    )
    ours = _pixels(result.cells[0][3].path)
    assert result.columns[3].lora_passes == "negative"
    reference = _reference_negative_pass(fresh_model, lora_file, "a blue square", "wrong", 11, 1.0)
    assert np.abs(ours - reference).max() <= 1
    # and it is not the same as either the LoRA on both passes or no LoRA at all
    assert np.abs(ours - _pixels(result.cells[0][2].path)).max() > 5
    assert np.abs(ours - _pixels(result.cells[0][1].path)).max() > 5


def test_grid_layout_metadata_and_store_rows(generator, store, lora_file):
    result = run_comparison(
        generator,
        store,
        CompareRequest(prompts=("a red circle", "a cat"), seeds=(1, 2), lora=str(lora_file), steps=3),
    )
    grid = Image.open(result.grid_path)
    description = json.loads(grid.text["negalora_comparison"])
    assert [c["label"] for c in description["columns"]] == [
        "base",
        "negative: wrong",
        "LoRA 1 on negative pass",  # the product's default way
        "LoRA 1 + negative (both passes)",
    ]
    assert [(r["prompt"], r["seed"]) for r in description["rows"]] == [
        ("a red circle", 1),
        ("a red circle", 2),
        ("a cat", 1),
        ("a cat", 2),
    ]
    factor = description["cell_upscale"]
    assert grid.width > 4 * DEMO_SIZE * factor and grid.height > 4 * DEMO_SIZE * factor
    assert parse_parameters(grid.text["parameters"])["settings"]["Seed"] == "1"
    # the top-left cell is pasted, upscaled, somewhere in the grid: find the base cell's pixels
    cell = (
        Image.open(result.cells[0][0].path)
        .convert("RGB")
        .resize((DEMO_SIZE * factor, DEMO_SIZE * factor), Image.NEAREST)
    )
    stored = store.comparison(result.id)
    assert stored["status"] == "done" and len(stored["cells"]) == 16
    for row in range(4):
        seeds = {
            parse_parameters(Image.open(c["path"]).text["parameters"])["settings"]["Seed"]
            for c in stored["cells"]
            if c["row"] == row
        }
        assert seeds == {str(description["rows"][row]["seed"])}
    # every cell is a normal image that can be rated
    store.rate([stored["cells"][5]["image_id"]], "reject")
    assert store.counts()["reject"] == 1
    g = np.asarray(grid.convert("RGB"))
    c = np.asarray(cell)
    found = any(
        np.array_equal(g[y : y + c.shape[0], x : x + c.shape[1]], c)
        for y in range(0, g.shape[0] - c.shape[0] + 1, 4)
        for x in range(0, g.shape[1] - c.shape[1] + 1, 4)
    )
    assert found


def test_scale_sweep_loads_the_lora_once_and_scale_zero_is_negative_only(generator, store, lora_file, monkeypatch):
    generator.release_lora()
    pipe = generator.model.pipe
    loads = []
    original = pipe.load_lora_weights
    monkeypatch.setattr(pipe, "load_lora_weights", lambda *a, **k: (loads.append(a), original(*a, **k))[1])
    sweep = run_comparison(
        generator,
        store,
        CompareRequest(
            prompts=("a cat",), seeds=(5, 6), kind="scale_sweep", scales=(0, 0.5, 1), lora=str(lora_file), steps=3
        ),
    )
    assert len(loads) == 1
    assert [c.label for c in sweep.columns] == [
        "scale 0 (negative pass)",
        "scale 0.5 (negative pass)",
        "scale 1 (negative pass)",
    ]
    plain = run_comparison(
        generator,
        store,
        CompareRequest(prompts=("a cat",), seeds=(5, 6), lora=str(lora_file), steps=3, extra_column=False),
    )
    for r in range(2):
        assert np.abs(_pixels(sweep.cells[r][0].path) - _pixels(plain.cells[r][1].path)).max() <= 1
        assert np.array_equal(_pixels(sweep.cells[r][2].path), _pixels(plain.cells[r][2].path))


def _fake_run(store, tmp_path, fresh_model, steps=(10, 20, 30)):
    store.create_run("run-a", None, json.dumps({"steps": 30}), 8)
    for i, step in enumerate(steps):
        path = store.home.runs / "run-a" / "checkpoints" / f"step-{step:06d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_demo_lora(fresh_model.pipe, path, seed=i)
        store.add_checkpoint("run-a", step, path, "0" * 64)
    return "run-a"


def test_checkpoint_sweep_and_best_checkpoint(generator, store, tmp_path, fresh_model):
    run = _fake_run(store, tmp_path, fresh_model)
    assert resolve_lora(store, run).step == 30  # the last one by default
    with pytest.raises(NegaloraError, match="no checkpoint at step 25"):
        store.set_best_step(run, 25)
    store.set_best_step(run, 20)
    assert resolve_lora(store, run).step == 20  # the marked one from now on
    with pytest.raises(NegaloraError, match="no kept checkpoint at step 15"):
        resolve_lora(store, run, 15)
    result = run_comparison(
        generator,
        store,
        CompareRequest(
            prompts=("a cat",), seeds=(1,), kind="checkpoint_sweep", lora=run, checkpoint_steps=(10, 30), steps=3
        ),
    )
    assert [c.label for c in result.columns] == [
        "negative: wrong",
        "step 10 (negative pass)",
        "step 30 (negative pass)",
    ]
    paths = [json.loads(Image.open(s.path).text["negalora"])["lora_path"] for s in result.cells[0]]
    assert (
        paths[0] == "" and paths[1].endswith("step-000010.safetensors") and paths[2].endswith("step-000030.safetensors")
    )
    assert store.comparisons(run)[0]["kind"] == "checkpoint_sweep"


def test_cancel_keeps_finished_cells_and_writes_no_grid(generator, store, lora_file):
    token = CancelToken()
    done = []

    def on_cell(r, c, stored):
        done.append(stored)
        token.cancel()

    result = run_comparison(
        generator,
        store,
        CompareRequest(prompts=("a",), seeds=(1, 2), lora=str(lora_file), steps=2, batch_size=1),
        cancel=token,
        on_cell=on_cell,
    )
    assert result.status == "cancelled" and result.grid_path is None and len(done) == 1
    stored = store.comparison(result.id)
    assert stored["status"] == "cancelled" and len(stored["cells"]) == 1
    assert not (store.home.comparisons / f"{result.id:06d}").exists()


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"lora": ""}, "needs a LoRA"),
        ({"lora": "missing.safetensors"}, "no such LoRA file"),
        ({"lora": "no-such-run"}, "no such training run"),
        ({"prompts": ()}, "at least one prompt"),
        ({"seeds": ()}, "at least one seed"),
        ({"kind": "xy"}, "comparison kind"),
        ({"lora_passes": "sideways"}, "LoRA passes"),
        ({"kind": "checkpoint_sweep"}, "needs a training run"),
    ],
)
def test_bad_requests_fail_before_any_cell(generator, store, lora_file, kw, msg):
    request = {"prompts": ("a",), "seeds": (1,), "lora": str(lora_file), "steps": 2, **kw}
    with pytest.raises(NegaloraError, match=msg):
        run_comparison(generator, store, CompareRequest(**request))
    assert store.counts()["all"] == 0


def test_wilson_interval_against_its_closed_form():
    # Textbook values (Wilson 1927; e.g. Newcombe 1998, table I): 8/10 → 0.490–0.943, 0/10 → 0–0.278.
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and round(hi, 3) == 0.278
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # it narrows with more votes at the same rate
    assert np.diff(wilson_interval(80, 100)) < np.diff(wilson_interval(8, 10))


def test_votes_are_stored_with_their_order_and_win_rates_count_ties_half(store):
    store.create_run("r", None, "{}", 1)
    ids = [store.add_imported(bytes([i]) * 10, ".png", 1, 1, f"{i}.png").id for i in range(2)]
    # a on the left, chose left → a wins; a on the right, chose left → b wins; tie
    for a_on_left, choice in [(True, "left"), (False, "left"), (False, "right"), (True, "tie"), (True, "left")]:
        store.add_vote("LoRA + negative", ids[0], "negative", ids[1], a_on_left, choice, run_id="r", step=100)
    rows = store.votes("r")
    assert [r["outcome"] for r in rows] == ["a", "b", "a", "tie", "a"]
    assert [r["a_on_left"] for r in rows] == [1, 0, 0, 1, 1]
    (rate,) = win_rates(rows)
    assert (rate.wins, rate.losses, rate.ties, rate.n) == (3, 1, 1, 5)
    assert rate.rate == pytest.approx(3.5 / 5)
    assert rate.interval == wilson_interval(3.5, 5)
    assert "70%" in rate.describe()
    with pytest.raises(NegaloraError):
        store.add_vote("a", ids[0], "b", ids[1], True, "up")


def test_vote_pairs_are_shuffled_with_random_sides_and_skip_identical_cells():
    cells = [{"row": r, "col": c, "image_id": 10 * r + c, "path": f"{r}{c}.png"} for r in range(40) for c in range(3)]
    cells[3 * 7 + 2]["image_id"] = cells[3 * 7 + 1]["image_id"]  # row 7: the two columns are the same image
    pairs = vote_pairs({"cells": cells}, 2, 1, random.Random(4))
    assert len(pairs) == 39
    assert {p.a_on_left for p in pairs} == {True, False}
    assert [p.a_image_id for p in pairs] != sorted(p.a_image_id for p in pairs)  # shuffled
    p = VotePair(1, "a.png", 2, "b.png", a_on_left=False)
    assert p.left_right() == ("b.png", "a.png")


def test_a_failing_cell_marks_the_comparison_failed(generator, store, lora_file, monkeypatch):
    calls = []
    real = generator.render_batch

    def flaky(recipes, *args, **kw):
        calls.append(recipes)
        if len(calls) == 2:
            raise NegaloraError("the model produced NaN pixels")
        return real(recipes, *args, **kw)

    monkeypatch.setattr(generator, "render_batch", flaky)
    request = CompareRequest(prompts=("a",), seeds=(1, 2), lora=str(lora_file), steps=2, batch_size=1)
    with pytest.raises(NegaloraError, match="NaN"):
        run_comparison(generator, store, request)
    (row,) = store.comparisons()
    assert row["status"] == "failed" and len(store.comparison(row["id"])["cells"]) == 1


def test_a_runs_lora_is_only_compared_on_the_model_it_was_trained_on(generator, store, tmp_path, fresh_model):
    run = _fake_run(store, tmp_path, fresh_model, steps=(10,))
    other = store.ensure_model("my-sdxl", "folder", "/models/my-sdxl", "f" * 64)
    store.db.execute("UPDATE runs SET model_id = ? WHERE id = ?", [other, run])
    with pytest.raises(NegaloraError, match="was trained on model my-sdxl"):
        run_comparison(generator, store, CompareRequest(prompts=("a",), seeds=(1,), lora=run, steps=2))


def test_the_best_checkpoint_survives_pruning_and_a_pruned_one_cannot_be_marked(store, tmp_path, fresh_model):
    from negalora.train.config import TrainConfig
    from negalora.train.trainer import Trainer

    run = _fake_run(store, tmp_path, fresh_model, steps=(10, 20, 30))
    store.set_best_step(run, 10)
    Trainer(store.home, store, None)._prune(run, TrainConfig(keep_last=1))
    assert [c["step"] for c in store.checkpoints(run)] == [10, 30]
    assert (store.home.runs / run / "checkpoints" / "step-000010.safetensors").exists()
    assert not (store.home.runs / run / "checkpoints" / "step-000020.safetensors").exists()
    with pytest.raises(NegaloraError, match=r"no checkpoint at step 20 \(kept: 10, 30\)"):
        store.set_best_step(run, 20)


def test_votes_on_two_lora_files_are_counted_apart(store):
    ids = [store.add_imported(bytes([i]) * 10, ".png", 1, 1, f"{i}.png").id for i in range(2)]
    for n, lora_hash in enumerate(("a" * 64, "b" * 64)):
        cid = store.create_comparison("three_way", [], {}, lora_path=f"/x/{n}.safetensors", lora_hash=lora_hash)
        store.add_vote("LoRA + negative", ids[0], "negative", ids[1], True, "left" if n else "right", comparison_id=cid)
    rates = sorted(win_rates(store.votes()), key=lambda w: w.lora_hash)
    assert [(w.lora_hash[0], w.wins, w.losses) for w in rates] == [("a", 0, 1), ("b", 1, 0)]
    assert "LoRA bbbbbbbbbb" in rates[1].describe()


def test_the_negative_pass_wrapper_splits_nested_arguments_and_restores_a_wrapped_forward():
    from negalora.lora_passes import lora_on_negative_pass

    seen = []

    class Fake:
        def __init__(self):
            self.lora = True
            self.forward = self.hooked  # as an offload hook sets it on the instance

        def hooked(self, sample, extra=None, cond=None):
            seen.append((self.lora, sample.shape[0], [t.shape[0] for t in extra], cond["ids"].shape[0]))
            return (sample * (2 if self.lora else 1),)

        def disable_lora(self):
            self.lora = False

        def enable_lora(self):
            self.lora = True

    fake = Fake()
    hook = fake.forward
    with lora_on_negative_pass(fake):
        out = fake.forward(torch.ones(4, 1), extra=[torch.zeros(4), torch.zeros(4)], cond={"ids": torch.zeros(4, 6)})
        fake.forward(torch.ones(1, 1), extra=[], cond={"ids": torch.zeros(1, 6)})  # no negative half: LoRA off
    assert out[0][:, 0].tolist() == [2, 2, 1, 1]  # the LoRA (x2) on the negative half only
    assert seen == [(True, 2, [2, 2], 2), (False, 2, [2, 2], 2), (False, 1, [], 1)]
    assert fake.forward == hook and fake.lora
