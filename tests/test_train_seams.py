"""The trainer's parts that need no model: the seeded batch schedule, the objective on tiny tensors
against the formulas, the processes' collectives in one process, and checkpoint pruning."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from negalora.errors import NegaloraError
from negalora.train import checkpoints, distributed, objective, schedule

# -- the schedule ---------------------------------------------------------------------------

SQUARE, WIDE = (4, 8, 8), (4, 6, 10)


def _walk(sched: schedule.Schedule, steps, world=1, rank=0):
    """Every micro-batch of ``steps`` on ``rank``: a list of lists of sample indices."""
    return [[i for i, _ in sched.at(s, m, world, rank)] for s in steps for m in range(sched.grad_accum)]


def test_each_sample_appears_once_per_epoch_in_batches_of_one_bucket():
    shapes = [SQUARE] * 7 + [WIDE] * 4
    sched = schedule.Schedule(shapes, [1] * 11, batch=3, grad_accum=1, seed=5)
    per_epoch = sched.per_epoch
    assert per_epoch == math.ceil(7 / 3) + math.ceil(4 / 3)
    for epoch in range(3):
        steps = range(epoch * per_epoch + 1, (epoch + 1) * per_epoch + 1)
        batches = _walk(sched, steps)
        assert sorted(i for b in batches for i in b) == list(range(11))
        assert all(len({shapes[i] for i in b}) == 1 for b in batches)
        assert all(1 <= len(b) <= 3 for b in batches)


def test_batches_per_epoch_matches_every_epoch():
    shapes = [SQUARE] * 5 + [WIDE] * 2
    for batch in (1, 2, 4, 8):
        n = schedule.batches_per_epoch(shapes, batch)
        assert all(len(schedule.epoch_batches(shapes, batch, 3, e)) == n for e in range(4))


def test_gradient_accumulation_walks_the_same_epoch_as_bigger_steps():
    shapes = [SQUARE] * 8
    accum = schedule.Schedule(shapes, [1] * 8, batch=2, grad_accum=2, seed=1)
    plain = schedule.Schedule(shapes, [1] * 8, batch=2, grad_accum=1, seed=1)
    assert _walk(accum, [1, 2]) == _walk(plain, [1, 2, 3, 4])


def test_ranks_get_disjoint_batches_that_together_cover_the_epoch():
    shapes = [SQUARE] * 8
    sched = schedule.Schedule(shapes, [1] * 8, batch=2, grad_accum=1, seed=9)
    assert sched.per_epoch == 4
    ranks = [_walk(sched, [1, 2], world=2, rank=r) for r in (0, 1)]
    seen = [{i for b in batches for i in b} for batches in ranks]
    assert not seen[0] & seen[1]
    assert sorted(i for batches in ranks for b in batches for i in b) == list(range(8))


def test_micro_index_is_one_sequence_over_steps_micro_batches_and_ranks():
    grad_accum, world, steps = 3, 2, 4
    indices = [
        schedule.micro_index(s, m, grad_accum, world, r)
        for s in range(1, steps + 1)
        for m in range(grad_accum)
        for r in range(world)
    ]
    assert indices == list(range(steps * grad_accum * world))


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another():
    shapes = [SQUARE] * 10 + [WIDE] * 6

    def run(seed):
        sched = schedule.Schedule(shapes, [2] * 16, batch=2, grad_accum=1, seed=seed)
        return [sched.at(s, 0) for s in range(1, 30)]

    assert run(4) == run(4)
    assert run(4) != run(5)
    assert schedule.epoch_batches(shapes, 2, 4, 0) != schedule.epoch_batches(shapes, 2, 4, 1)


def test_a_resumed_schedule_replays_the_uninterrupted_one():
    shapes = [SQUARE] * 6 + [WIDE] * 3
    whole = schedule.Schedule(shapes, [2] * 9, batch=2, grad_accum=2, seed=7)
    walked = {s: [whole.at(s, m) for m in range(2)] for s in range(1, 21)}
    resumed = schedule.Schedule(shapes, [2] * 9, batch=2, grad_accum=2, seed=7)
    assert {s: [resumed.at(s, m) for m in range(2)] for s in range(13, 21)} == {s: walked[s] for s in range(13, 21)}


def test_streams_draw_apart_and_do_not_disturb_each_other():
    shapes = [SQUARE] * 12
    assert schedule.epoch_batches(shapes, 3, 2, 0, stream=0) != schedule.epoch_batches(shapes, 3, 2, 0, stream=1)
    first = schedule.Schedule(shapes, [1] * 12, batch=3, grad_accum=1, seed=2)
    alone = [first.at(s, 0) for s in range(1, 9)]
    second = schedule.Schedule(shapes, [1] * 12, batch=3, grad_accum=1, seed=2)
    other = schedule.Schedule(shapes[:5], [1] * 5, batch=1, grad_accum=1, seed=2, stream=1)
    interleaved = []
    for s in range(1, 9):
        other.at(s, 0)
        interleaved.append(second.at(s, 0))
    assert interleaved == alone
    a = torch.randn(8, generator=schedule.noise_generator(2, 1, 0, stream=0))
    b = torch.randn(8, generator=schedule.noise_generator(2, 1, 0, stream=1))
    assert not torch.equal(a, b)


def test_variants_are_picked_within_range_and_both_are_used():
    shapes = [SQUARE] * 4
    sched = schedule.Schedule(shapes, [2] * 4, batch=2, grad_accum=1, seed=3)
    picks = [v for s in range(1, 41) for _, v in sched.at(s, 0)]
    assert set(picks) == {0, 1}
    one = schedule.Schedule(shapes, [1] * 4, batch=2, grad_accum=1, seed=3)
    assert {v for s in range(1, 11) for _, v in one.at(s, 0)} == {0}


def test_rank_zero_keeps_the_single_process_noise_and_other_ranks_their_own():
    def draw(*args, **kw):
        return torch.randn(16, generator=schedule.noise_generator(*args, **kw))

    assert torch.equal(draw(11, 3, 1), draw(11, 3, 1, 0, 0))
    assert torch.equal(draw(11, 3, 1, rank=1), draw(11, 3, 1, rank=1))
    assert not torch.equal(draw(11, 3, 1, rank=0), draw(11, 3, 1, rank=1))
    assert not torch.equal(draw(11, 3, 1), draw(11, 4, 1))
    assert not torch.equal(draw(11, 3, 1), draw(11, 3, 0))


def test_seeded_depends_on_every_part_and_its_order():
    def draw(*parts):
        return torch.randn(4, generator=schedule.seeded(*parts)).tolist()

    assert draw(1, 2, 3) == draw(1, 2, 3)
    assert draw(1, 2, 3) != draw(1, 3, 2)
    assert draw(1, 2, 3) != draw(1, 2, 4)


# -- the objective --------------------------------------------------------------------------

BETAS = [0.1, 0.5, 0.6, 0.95]  # alphas_cumprod 0.9, 0.45, 0.18, 0.009


def _scheduler(prediction_type="epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=len(BETAS), trained_betas=BETAS, prediction_type=prediction_type)


def _alphas_cumprod():
    return [math.prod(1 - b for b in BETAS[: t + 1]) for t in range(len(BETAS))]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_formula(prediction_type):
    sched = _scheduler(prediction_type)
    gamma = 2.0
    timesteps = torch.arange(len(BETAS))
    weights = objective.min_snr_weights(sched, timesteps, gamma)
    for t, ac in enumerate(_alphas_cumprod()):
        snr = ac / (1 - ac)
        expected = min(snr, gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
        assert weights[t].item() == pytest.approx(expected, rel=1e-5)


def test_the_target_is_the_noise_for_epsilon_and_the_velocity_for_v_prediction():
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    timesteps = torch.tensor([0, 3])
    assert objective.prediction_target(_scheduler(), latents, noise, timesteps) is noise
    v = objective.prediction_target(_scheduler("v_prediction"), latents, noise, timesteps)
    acs = _alphas_cumprod()
    for k, t in enumerate(timesteps.tolist()):
        expected = math.sqrt(acs[t]) * noise[k] - math.sqrt(1 - acs[t]) * latents[k]
        assert torch.allclose(v[k], expected, atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 0.1])
def test_noise_offset_and_timesteps_are_drawn_in_that_order_and_noise_the_latents(offset):
    latents = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    sched = _scheduler()
    noised = objective.add_noise(latents, sched, torch.Generator().manual_seed(42), offset)
    g = torch.Generator().manual_seed(42)
    noise = torch.randn(latents.shape, generator=g)
    if offset:
        noise = noise + offset * torch.randn((3, 4, 1, 1), generator=g)
    timesteps = torch.randint(0, len(BETAS), (3,), generator=g)
    assert torch.equal(noised.noise, noise) and torch.equal(noised.timesteps, timesteps)
    acs = _alphas_cumprod()
    for k, t in enumerate(timesteps.tolist()):
        expected = math.sqrt(acs[t]) * latents[k] + math.sqrt(1 - acs[t]) * noise[k]
        assert torch.allclose(noised.noisy[k], expected, atol=1e-6)


def test_the_loss_is_the_mean_squared_error_and_min_snr_weights_each_image():
    sched = _scheduler()
    pred = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([[[[1.0, 3.0]]], [[[2.0, 2.0]]]])  # per image MSE 5 and 4
    timesteps = torch.tensor([0, 2])
    plain = objective.prediction_loss(pred, target, sched, timesteps)
    assert plain.item() == pytest.approx(4.5)
    weighted = objective.prediction_loss(pred, target, sched, timesteps, min_snr_gamma=1.0)
    acs = _alphas_cumprod()
    w = [min(s, 1.0) / s for s in (acs[0] / (1 - acs[0]), acs[2] / (1 - acs[2]))]
    assert weighted.item() == pytest.approx((5 * w[0] + 4 * w[1]) / 2, rel=1e-5)


def test_the_prior_weight_scales_the_class_images_loss_only():
    loss, class_loss = torch.tensor(0.3), torch.tensor(0.8)
    assert objective.with_prior(loss, class_loss, 0.5).item() == pytest.approx(0.3 + 0.5 * 0.8)
    assert objective.with_prior(loss, class_loss, 0.0).item() == pytest.approx(0.3)


def test_denoising_loss_scores_the_unets_prediction_against_the_target():
    latents = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    batch = objective.Batch(latents, torch.zeros(2, 6), torch.zeros(2, 5, 8), torch.zeros(2, 8), ("wrong", "wrong"))
    calls = []

    def unet(noisy, timesteps, embeds, added_cond_kwargs, return_dict):
        calls.append((noisy.dtype, embeds.shape, added_cond_kwargs["time_ids"].shape))
        return (torch.zeros_like(noisy),)

    sched = _scheduler()
    loss = objective.denoising_loss(unet, sched, batch, torch.Generator().manual_seed(8))
    noised = objective.add_noise(latents, sched, torch.Generator().manual_seed(8))
    assert loss.item() == pytest.approx((noised.noise**2).mean().item(), rel=1e-6)
    assert calls == [(torch.float32, (2, 5, 8), (2, 6))]


def _sample(caption):
    return SimpleNamespace(latents=torch.zeros(4, 2, 2), time_ids=torch.arange(6.0), caption=caption)


def test_collate_pads_a_shorter_caption_with_the_empty_prompts_chunk():
    text = {
        "": (torch.full((3, 2), -1.0), torch.zeros(2)),
        "short": (torch.ones(3, 2), torch.ones(2)),
        "long": (torch.full((6, 2), 2.0), torch.full((2,), 2.0)),
    }
    batch = objective.collate([_sample("short"), _sample("long")], text)
    assert batch.encoded and batch.captions == ("short", "long")
    assert batch.latents.shape == (2, 4, 2, 2) and batch.time_ids.shape == (2, 6)
    assert batch.embeds.shape == (2, 6, 2)
    assert torch.equal(batch.embeds[0], torch.cat([text["short"][0], text[""][0]]))
    assert torch.equal(batch.embeds[1], text["long"][0])
    assert torch.equal(batch.pooled, torch.stack([text["short"][1], text["long"][1]]))


def test_collate_leaves_the_captions_to_learning_text_encoders():
    batch = objective.collate([_sample("a"), _sample("b")], {}, encode_text=True)
    assert not batch.encoded and batch.captions == ("a", "b") and batch.pooled is None
    encoded = batch.with_text(torch.zeros(2, 3, 2), torch.zeros(2, 2))
    assert encoded.encoded and encoded.captions == ("a", "b")


# -- one process ----------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [True, False])
def test_any_process_alone_is_the_flag_itself(flag):
    assert distributed.any_process(flag, None) is flag
    accelerator = distributed.make_accelerator("no", torch.device("cpu"))
    assert accelerator.num_processes == 1
    assert distributed.any_process(flag, accelerator) is flag


def test_main_first_alone_runs_the_work_once_and_lets_its_error_through():
    calls = []
    assert distributed.main_first(lambda: calls.append(1) or "done", None) == "done"
    assert calls == [1]

    def fail():
        raise NegaloraError("no images")

    with pytest.raises(NegaloraError, match="no images"):
        distributed.main_first(fail, None)


def test_a_process_alone_has_no_shared_state_and_is_the_main_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.distributed_state(None) is None  # the model is not even looked at
    assert distributed.is_main(None)


def test_mixed_precision_on_the_cpu_and_the_weights_dtype():
    cpu = torch.device("cpu")
    assert distributed.mixed_precision("auto", cpu) == "no"
    assert distributed.mixed_precision("bf16", cpu) == "bf16"
    assert distributed.weight_dtype("no") == torch.float32
    assert distributed.weight_dtype("bf16") == torch.bfloat16
    assert distributed.weight_dtype("fp16") == torch.float16


# -- checkpoints ----------------------------------------------------------------------------


class _Store:
    def __init__(self, paths, best=None):
        self.rows = [{"step": s, "path": str(p)} for s, p in paths]
        self.best = best

    def checkpoints(self, run_id):
        return list(self.rows)

    def run(self, run_id):
        return {"best_step": self.best}

    def mark_checkpoint_removed(self, run_id, step):
        self.rows = [r for r in self.rows if r["step"] != step]


def _files(tmp_path: Path, steps):
    out = []
    for s in steps:
        path = checkpoints.checkpoint_path(tmp_path, s)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"lora")
        checkpoints.state_path(path).write_bytes(b"state")
        out.append((s, path))
    return out


def test_prune_keeps_the_last_ones_and_the_chosen_one(tmp_path):
    files = _files(tmp_path, [10, 20, 30, 40, 50])
    store = _Store(files, best=20)
    checkpoints.prune(store, "r", keep_last=2)
    assert [r["step"] for r in store.rows] == [20, 40, 50]
    for step, path in files:
        kept = step in (20, 40, 50)
        assert path.exists() is kept and checkpoints.state_path(path).exists() is kept
    assert checkpoints.state_path(files[0][1]).name == "step-000010.state.safetensors"


def test_prune_with_keep_last_zero_keeps_all(tmp_path):
    files = _files(tmp_path, [1, 2, 3])
    store = _Store(files)
    checkpoints.prune(store, "r", keep_last=0)
    assert [r["step"] for r in store.rows] == [1, 2, 3] and all(p.exists() for _, p in files)
