"""The trainer on the demo model, on the CPU: a real run, checkpoints, exact resume, disk full, NaN guard."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_train import seed_rejects as _seed_rejects
from PIL import Image
from safetensors.torch import load_file

from negalora.cancel import CancelToken
from negalora.device import choose_placement
from negalora.generate import GenerateRequest, Generator
from negalora.models.demo import DEMO_SIZE
from negalora.models.loader import load_model
from negalora.store import Store
from negalora.train import trainer as trainer_module
from negalora.train.config import PRESETS, TrainConfig, default_preset, preset
from negalora.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def _config(**kw):
    base = dict(
        steps=20,
        lr=1e-3,
        batch=2,
        checkpoint_every=10,
        keep_last=0,
        validation_prompts=("a red circle",),
        validation_steps=2,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _model(home):
    return load_model("demo", home, choose_placement("cpu"))


def test_a_50_step_run_logs_every_loss_and_its_lora_works(home):
    store = _seed_rejects(home, 8)
    model = _model(home)
    events = []
    result = Trainer(home, store, model, on_event=events.append).start(_config(steps=50, checkpoint_every=25))
    assert result.status == "done" and result.steps_done == 50
    losses = store.losses(result.run_id)
    assert [s for s, _ in losses] == list(range(1, 51))
    assert all(np.isfinite(v) for _, v in losses)
    assert [Path(c).name for c in result.checkpoints] == ["step-000025.safetensors", "step-000050.safetensors"]
    assert any(e["type"] == "validation" and e["step"] == 50 for e in events)
    assert len(list((home.runs / result.run_id / "samples").glob("*.png"))) == 2
    row = store.run(result.run_id)
    assert row["status"] == "done" and row["images"] == 8 and row["final_loss"] == losses[-1][1]
    # The checkpoint loads with diffusers' own loader and changes the image for the same seed.
    pipe = model.pipe
    assert not any("lora" in n for n, _ in pipe.unet.named_parameters())  # the trainer cleaned up
    gen = Generator(model)
    recipe = gen.plan(GenerateRequest(prompts=("a red circle",), negative="wrong", seed=5, steps=6))[0]
    before = np.asarray(gen.render(recipe), dtype=np.int16)
    pipe.load_lora_weights(result.checkpoints[-1], adapter_name="check")
    after = np.asarray(gen.render(recipe), dtype=np.int16)
    pipe.unload_lora_weights()
    assert np.abs(after - before).max() > 0
    with_lora = gen.plan(
        GenerateRequest(
            prompts=("a red circle",),
            negative="wrong",
            seed=5,
            steps=6,
            lora=result.checkpoints[-1],
            lora_passes="both",  # as load_lora_weights applies it
        )
    )[0]
    assert np.array_equal(np.asarray(gen.render(with_lora), dtype=np.int16), after)
    store.close()


def _straight_and_resumed(tmp_path, config, stop_at, images):
    """The same run twice: straight through, and cancelled after step ``stop_at`` then resumed.
    Returns both final LoRA files' tensors and the resumed run's (store, model, run id)."""
    from negalora.home import Home

    finals = []
    for name, interrupt in (("straight", False), ("resumed", True)):
        home = Home(tmp_path / name)
        store = _seed_rejects(home, images)
        model = _model(home)
        cancel = CancelToken()

        def on_event(e, cancel=cancel, interrupt=interrupt):
            if interrupt and e["type"] == "train_step" and e["step"] == stop_at:
                cancel.cancel()

        first = Trainer(home, store, model, on_event=on_event, cancel=cancel).start(config)
        if interrupt:
            assert first.status == "cancelled" and first.steps_done == stop_at
            again = Trainer(home, store, model).resume(first.run_id)
            assert again.status == "done" and again.steps_done == config.steps
        finals.append(load_file(store.checkpoints(first.run_id)[-1]["path"]))
        if not interrupt:
            store.close()
    a, b = finals
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    return a, (store, model, first.run_id)


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    _, (store, _, run_id) = _straight_and_resumed(tmp_path, _config(flip=True), stop_at=10, images=6)
    assert [s for s, _ in store.losses(run_id)] == list(range(1, 21))
    store.close()


def test_disk_full_at_a_checkpoint_pauses_the_run_and_resume_finishes_it(home):
    from negalora import faults
    from negalora.hashing import sha256_file

    store = _seed_rejects(home, 4)
    model = _model(home)
    faults.configure("checkpoint_write=enospc@2")  # the second checkpoint finds the disk full
    try:
        result = Trainer(home, store, model).start(_config(steps=15, checkpoint_every=5, validation_steps=0, batch=1))
    finally:
        faults.configure("")
    assert result.status == "paused" and result.steps_done == 5
    assert "step-000010.safetensors: disk full" in result.message and "resume" in result.message
    assert store.run(result.run_id)["status"] == "paused"
    [kept] = store.checkpoints(result.run_id)
    assert kept["step"] == 5 and kept["sha256"] == sha256_file(kept["path"])
    folder = home.runs / result.run_id / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000005.safetensors", "step-000005.state.safetensors"]
    resumed = Trainer(home, store, model).resume(result.run_id)
    assert resumed.status == "done" and resumed.steps_done == 15
    assert [s for s, _ in store.losses(result.run_id)] == list(range(1, 16))
    store.close()


def test_a_disk_too_full_to_save_the_state_or_the_outcome_still_pauses(home, monkeypatch):
    from negalora import faults
    from negalora.errors import DiskFull

    store = _seed_rejects(home, 4)
    model = _model(home)
    real = store.update_run

    def full_when_pausing(run_id, **fields):
        if fields.get("status") == "paused":
            raise DiskFull(f"{home.db_path}: disk full")
        return real(run_id, **fields)

    monkeypatch.setattr(store, "update_run", full_when_pausing)
    faults.configure("resume_state_write=enospc@1")  # the first checkpoint's optimizer state
    events = []
    try:
        result = Trainer(home, store, model, on_event=events.append).start(
            _config(steps=10, checkpoint_every=5, validation_steps=0, batch=1)
        )
    finally:
        faults.configure("")
    assert result.status == "paused" and result.steps_done == 0 and store.checkpoints(result.run_id) == []
    assert "state.safetensors: disk full" in result.message and "could not be saved" in result.message
    assert any(e["type"] == "run_finished" and e["status"] == "paused" for e in events)
    assert not [p for p in (home.runs / result.run_id / "checkpoints").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(store, "update_run", real)
    resumed = Trainer(home, store, model).resume(result.run_id)  # from the start: no checkpoint was whole
    assert resumed.status == "done" and resumed.steps_done == 10
    store.close()


def test_a_compiled_run_trains_the_same_lora(home, cli):
    """--compile goes through torch.compile (here its tracing-only backend: inductor's kernel build
    takes minutes on this CPU, and benchmarks/bench_train.py measures it) and changes nothing else."""
    store = _seed_rejects(home, 4)
    model = _model(home)
    config = _config(steps=4, checkpoint_every=4, validation_steps=0)
    plain = Trainer(home, store, model).start(config)
    compiled = Trainer(home, store, model).start(replace(config, compile="eager"))
    assert compiled.status == "done"
    assert store.losses(compiled.run_id) == store.losses(plain.run_id)
    a, b = load_file(plain.checkpoints[-1]), load_file(compiled.checkpoints[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(store.run(compiled.run_id)["config"])["compile"] == "eager"
    store.close()
    bad = cli("train", "--compile", "fastest", "--home", home.root)
    assert bad.code == 2 and "compile 'fastest': choose one of inductor, aot_eager, eager" in bad.err


def test_nan_is_skipped_then_stops_keeping_the_last_good_checkpoint(home, monkeypatch):
    store = _seed_rejects(home, 4)
    model = _model(home)
    real = Trainer._loss

    def flaky(self, unet, noise_scheduler, config, batch, step, micro, device, weight_dtype):
        loss = real(self, unet, noise_scheduler, config, batch, step, micro, device, weight_dtype)
        return loss * float("nan") if step == 3 or step >= 6 else loss

    monkeypatch.setattr(Trainer, "_loss", flaky)
    events = []
    result = Trainer(home, store, model, on_event=events.append).start(
        _config(steps=20, checkpoint_every=2, max_nan_steps=3)
    )
    skips = [e["step"] for e in events if e["type"] == "nan_skip"]
    assert skips == [3, 6, 7, 8]
    assert result.status == "stopped_nan" and "3 non-finite losses in a row" in result.message
    assert [c["step"] for c in store.checkpoints(result.run_id)] == [2, 4]
    assert 3 not in [s for s, _ in store.losses(result.run_id)]
    for path in result.checkpoints:
        assert all(torch.isfinite(t).all() for t in load_file(path).values())
    store.close()


def test_no_rejects_is_a_clear_error(home):
    from negalora.errors import NegaloraError

    store = Store(home)
    with pytest.raises(NegaloraError, match="no training images"):
        Trainer(home, store, _model(home)).start(_config())
    store.close()


def test_train_cli_json_reports_run_checkpoints_and_loss(cli, home):
    _seed_rejects(home, 5).close()
    r = cli(  # no --preset: on the demo model a run starts from the measured demo recipe
        "train",
        "--steps",
        "6",
        "--checkpoint-every",
        "3",
        "--batch",
        "2",
        "--home",
        home.root,
        "--json",
    )
    assert r.code == 0, r.err
    out = r.json
    assert out["status"] == "done" and out["steps_done"] == 6 and isinstance(out["final_loss"], float)
    assert [Path(p).name for p in out["checkpoints"]] == ["step-000003.safetensors", "step-000006.safetensors"]
    runs = cli("list", "runs", "--home", home.root, "--json").json["runs"]
    config = runs[0]["config"]
    assert runs[0]["id"] == out["run"] and config["rank"] == 16 and config["feed_forward"] and config["lr"] == 3e-4
    assert config["steps"] == 6 and config["batch"] == 2  # the flags given still win over the preset


def test_presets_and_checks():
    assert PRESETS["woolf"].rank == 4 and PRESETS["woolf"].lr == 1e-4 and PRESETS["woolf"].lora_alpha == 4
    assert preset("cpu-demo", steps=7).steps == 7
    assert default_preset("demo") == "cpu-demo" and default_preset("/models/sd_xl_base_1.0.safetensors") == "woolf"
    assert TrainConfig(feed_forward=True).target_modules[-1] == "ff.net.2"
    from negalora.errors import NegaloraError

    for bad in (dict(rank=0), dict(lr=2.0), dict(lr_schedule="linear-ish"), dict(resolution=30), dict(token=" ")):
        with pytest.raises(NegaloraError):
            TrainConfig(**bad).check()


def test_woolfs_lora_on_the_real_sdxl_architecture():
    """Rank 4 on the UNet attention of SDXL base (built on the meta device, no weights):
    560 modules and 5,806,080 parameters, 23.2 MB in fp32, as Woolf's published LoRA."""
    from diffusers import UNet2DConditionModel

    from negalora.resources import SDXL_BASE_CONFIG
    from negalora.train.lora import lora_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(SDXL_BASE_CONFIG / "unet")))
    unet.add_adapter(lora_config(PRESETS["woolf"]))
    lora = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    modules = {n.rsplit(".lora_", 1)[0] for n in lora}
    assert len(modules) == 560
    assert sum(p.numel() for p in lora.values()) == 5_806_080


def test_resume_state_round_trips_without_pickle(tmp_path):
    from negalora.train.resume_state import load_resume_state, save_resume_state

    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([p], lr=1e-3)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    save_resume_state(tmp_path / "s.safetensors", step=3, optimizer=opt)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.AdamW([q], lr=1e-3)
    meta = load_resume_state(tmp_path / "s.safetensors", opt2)
    assert meta["step"] == 3
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(opt.state_dict()["state"][0][k], opt2.state_dict()["state"][0][k])
    assert b"pickle" not in (tmp_path / "s.safetensors").read_bytes()[:64]


def test_an_fp16_loss_scale_is_kept_in_the_resume_state(tmp_path):
    from negalora.train.resume_state import load_resume_state, save_resume_state

    p = torch.nn.Parameter(torch.randn(2))
    opt = torch.optim.AdamW([p])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    scaler.update(new_scale=1234.0)
    save_resume_state(tmp_path / "s.safetensors", step=1, optimizer=opt, scaler=scaler.state_dict())
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(load_resume_state(tmp_path / "s.safetensors", torch.optim.AdamW([p]))["scaler"])
    assert restored.get_scale() == 1234.0


def test_captions_longer_than_75_tokens_train_beside_short_ones(home):
    store = _seed_rejects(home, 4)
    long_reasons = [f"defect{i}" for i in range(60)]  # "wrong, defect0, …": well over 77 tokens
    store.rate([1], "reject", long_reasons)
    store.close()
    model = _model(home)
    result = Trainer(home, Store(home), model).start(_config(steps=4, batch=4, captions_with_reasons=True))
    assert result.status == "done" and result.steps_done == 4


def test_prior_preservation_trains_beside_class_images_from_the_base_model(home):
    store = _seed_rejects(home, 4)
    model = _model(home)
    plain = Trainer(home, store, model).start(_config(steps=4, checkpoint_every=4, validation_steps=0))
    events = []
    pp = Trainer(home, store, model, on_event=events.append).start(
        _config(steps=4, checkpoint_every=4, validation_steps=0, prior_preservation=True, class_images=3, class_steps=3)
    )
    assert pp.status == "done"
    assert [e["done"] for e in events if e["type"] == "class_images"] == [1, 2, 3]
    made = list((home.cache / "class").rglob("*.png"))
    assert len(made) == 3 and all(Image.open(p).size == (DEMO_SIZE, DEMO_SIZE) for p in made)
    # the class loss is part of every step's loss
    a = dict(store.losses(plain.run_id))
    b = dict(store.losses(pp.run_id))
    assert all(b[s] != a[s] for s in a)
    a_w, b_w = load_file(plain.checkpoints[-1]), load_file(pp.checkpoints[-1])
    assert any(not torch.equal(a_w[k], b_w[k]) for k in a_w)
    store.close()


def test_a_text_encoder_lora_is_trained_saved_loaded_and_resumed_exactly(tmp_path):
    cfg = _config(steps=6, checkpoint_every=3, validation_steps=0, train_text_encoder=True)
    a, (store, model, run_id) = _straight_and_resumed(tmp_path, cfg, stop_at=3, images=4)
    assert any(k.startswith("text_encoder.") for k in a) and any(k.startswith("text_encoder_2.") for k in a)
    # the pipeline is clean again, and diffusers loads the file with its text-encoder parts
    pipe = model.pipe
    assert not any("lora" in n for n, _ in pipe.text_encoder.named_parameters())
    pipe.load_lora_weights(store.checkpoints(run_id)[-1]["path"], adapter_name="te")
    assert any("lora" in n for n, _ in pipe.text_encoder_2.named_parameters())
    pipe.unload_lora_weights()
    store.close()


def test_train_cli_date_window_filters_the_rejects(cli, home):
    _seed_rejects(home, 5).close()
    r = cli("train", "--preset", "cpu-demo", "--since", "2999-01-01", "--home", home.root)
    assert r.code == 2 and "no training images" in r.err


def test_bf16_training_leaves_generation_as_it_was(home):
    """As on a bf16 GPU: accelerate's autocast wrapper must not stay on the shared UNet (a bf16 VAE then
    refuses fp32 latents). The run before it, in the same process, uses another precision."""
    from negalora.device import Placement

    store = _seed_rejects(home, 4)
    plain = Trainer(home, store, _model(home)).start(_config(steps=2, checkpoint_every=2, validation_steps=0))
    assert plain.status == "done"
    cpu = choose_placement("cpu")
    model = load_model("demo", home, Placement(cpu.device, torch.bfloat16, torch.bfloat16))
    gen = Generator(model)
    recipe = gen.plan(GenerateRequest(prompts=("a red circle",), seed=2, steps=3))[0]
    before = np.asarray(gen.render(recipe))
    half = Trainer(home, store, model).start(
        _config(steps=2, checkpoint_every=2, validation_steps=2, mixed_precision="bf16")
    )
    assert half.status == "done"
    assert np.array_equal(np.asarray(gen.render(recipe)), before)
    store.close()


def test_a_lora_left_from_generation_is_taken_off_before_training(home, tmp_path):
    from helpers_lora import write_demo_lora

    store = _seed_rejects(home, 4)
    model = _model(home)
    lora = write_demo_lora(model.pipe, tmp_path / "user.safetensors")
    gen = Generator(model)
    gen.render(gen.plan(GenerateRequest(prompts=("a",), seed=1, steps=2, lora=str(lora)))[0])
    assert model.pipe.unet.peft_config  # the user's LoRA is on the pipeline
    events = []
    result = Trainer(home, store, model, on_event=events.append).start(_config(steps=2, checkpoint_every=2))
    assert result.status == "done"
    keys = load_file(result.checkpoints[-1]).keys()
    assert keys and not any("negalora_lora" in k for k in keys)
    assert not getattr(model.pipe.unet, "peft_config", None)
    store.close()


def test_batches_never_mix_buckets_and_show_each_image_once_per_epoch(home):
    from negalora.train.cache import Sample

    def sample(h, w):
        return [Sample(torch.zeros(4, h, w), torch.zeros(6), "wrong")]

    samples = [sample(16, 16)] * 5 + [sample(12, 20)] * 3
    trainer = Trainer(home, None, None)
    config = TrainConfig(batch=2, seed=4)
    batches = trainer._epoch_batches(config, samples, 0, 0)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(len({tuple(samples[i][0].latents.shape) for i in b}) == 1 for b in batches)
    assert trainer._epoch_batches(config, samples, 1, 0) != batches or len(batches) == 1


def test_cancel_before_the_first_step_is_a_cancel_not_a_crash(home):
    store = _seed_rejects(home, 4)
    cancel = CancelToken()
    cancel.cancel()
    result = Trainer(home, store, _model(home), cancel=cancel).start(_config())
    assert result.status == "cancelled" and store.run(result.run_id)["status"] == "cancelled"
    store.close()


def test_a_damaged_latent_cache_file_is_recomputed(home):
    store = _seed_rejects(home, 4)
    model = _model(home)
    Trainer(home, store, model).start(_config(steps=1, checkpoint_every=1, validation_steps=0))
    for f in (home.cache / "latents").rglob("*.safetensors"):
        f.write_bytes(b"damaged")
    again = Trainer(home, store, model).start(_config(steps=1, checkpoint_every=1, validation_steps=0))
    assert again.status == "done"
    store.close()


def test_the_optimiser_options_train_with_finite_losses(home):
    """Cosine with warmup, accumulation, min-SNR, noise offset, flips, the feed-forward layers and
    gradient checkpointing together: a short run finishes, every step logged and finite."""
    store = _seed_rejects(home, 4)
    config = _config(
        steps=6,
        lr_schedule="cosine",
        warmup_steps=2,
        grad_accum=2,
        min_snr_gamma=5.0,
        noise_offset=0.05,
        flip=True,
        feed_forward=True,
        gradient_checkpointing=True,
        checkpoint_every=6,
        validation_prompts=(),
    )
    result = Trainer(home, store, _model(home)).start(config)
    assert result.status == "done" and result.steps_done == 6
    losses = store.losses(result.run_id)
    assert [s for s, _ in losses] == list(range(1, 7)) and all(np.isfinite(v) for _, v in losses)
    keys = load_file(result.checkpoints[-1]).keys()
    assert any(".ff.net." in k for k in keys) and any(".attn1.to_q." in k for k in keys)
    store.close()


def test_the_loss_curve_is_written_in_batches_and_every_step_still_reaches_the_live_curve(home, monkeypatch):
    store = _seed_rejects(home, 4)
    commits = []
    real = Store.log_losses

    def counting(self, run_id, rows):
        commits.append([s for s, _, _ in rows])
        return real(self, run_id, rows)

    monkeypatch.setattr(Store, "log_losses", counting)
    monkeypatch.setattr(trainer_module._LossLog, "EVERY_S", 1e9)  # steps, not seconds, on a slow machine too
    events = []
    result = Trainer(home, store, _model(home), on_event=events.append).start(
        _config(steps=30, checkpoint_every=30, validation_steps=0, batch=1)
    )
    assert result.status == "done"
    assert [e["step"] for e in events if e["type"] == "train_step"] == list(range(1, 31))
    assert [s for rows in commits for s in rows] == list(range(1, 31))  # each step once, in order
    assert [len(rows) for rows in commits] == [25, 5]  # not one commit per step: 25 a commit, and at the end
    assert [s for s, _ in store.losses(result.run_id)] == list(range(1, 31))
    store.close()
