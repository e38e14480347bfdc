"""The DreamBooth LoRA trainer for the "wrong" token.

One run: pre-flight the rejects, cache latents and text embeddings, train a peft LoRA on the UNet
(accelerate places it and handles mixed precision), write checkpoints with their resume state and
validation images, and log a loss for every step. A run resumes from its last checkpoint and, on
the CPU, ends with the same weights as an uninterrupted one.
"""

import json
import math
import os
import resource
import secrets
import sqlite3
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from negalora import faults
from negalora.atomic import atomic_write_bytes, atomic_write_text, disk_full, is_disk_full
from negalora.cancel import CancelToken
from negalora.errors import Cancelled, DiskFull, NegaloraError
from negalora.hashing import sha256_file
from negalora.home import Home
from negalora.models.loader import LoadedModel
from negalora.store import Store
from negalora.train.cache import LatentCache, Sample, TextCache
from negalora.train.config import TrainConfig
from negalora.train.lora import add_lora, load_peft_state, peft_state, save_diffusers_lora
from negalora.train.resume_state import load_resume_state, read_resume_lora, save_resume_state

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

DEFAULT_VALIDATION_PROMPTS = ("a photo of a person", "a landscape painting")
DEMO_VALIDATION_PROMPTS = ("a red circle on a blue background", "a yellow square on a black background")


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: str  # done | cancelled | failed | stopped_nan | paused (disk full)
    steps_done: int
    final_loss: float | None
    checkpoints: list[str]
    message: str = ""


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _accelerator(mixed: str, device: torch.device):
    """accelerate keeps one state per process; a later run with another precision resets it (the
    distributed part of the state, set by `accelerate launch`, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed, cpu=device.type == "cpu")


def _distributed_state(model: LoadedModel):
    """Under `accelerate launch` or torchrun (WORLD_SIZE > 1) the processes' shared state; None when
    this process trains alone, so a single run never starts a process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from datetime import timedelta

    from accelerate import PartialState

    # The others wait while the main process caches latents or renders validation images: give them time.
    return PartialState(cpu=model.placement.device.type == "cpu", timeout=timedelta(hours=2))


def _mixed_precision(config: TrainConfig, device: torch.device) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _seeded(*parts: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, step, …): resumes replay it exactly."""
    value = 0
    for p in parts:
        value = (value * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator("cpu").manual_seed(value)


class _LossLog:
    """The run's loss curve, written to the database in small batches (one commit per batch of
    steps, not one per step); the live curve comes from the train_step events."""

    EVERY_STEPS = 25
    EVERY_S = 2.0

    def __init__(self, store: Store, run_id: str, enabled: bool):
        self.store, self.run_id, self.enabled = store, run_id, enabled
        self.rows: list[tuple[int, float, float]] = []
        self.flushed = time.monotonic()

    def add(self, step: int, loss: float, lr: float) -> None:
        if not self.enabled:
            return
        self.rows.append((step, loss, lr))
        if len(self.rows) >= self.EVERY_STEPS or time.monotonic() - self.flushed >= self.EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.store.log_losses(self.run_id, self.rows)
            self.rows = []
        self.flushed = time.monotonic()

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except (NegaloraError, OSError, sqlite3.Error):
            pass  # the step's own error is the one to report


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Trainer:
    def __init__(
        self,
        home: Home,
        store: Store,
        model: LoadedModel,
        on_event: Callable[[dict], None] | None = None,
        cancel: CancelToken | None = None,
    ):
        self.home = home
        self.store = store
        self.model = model
        self.on_event = on_event or (lambda e: None)
        self.cancel = cancel or CancelToken()
        self._batches: dict = {}
        # Several processes (one per GPU): only the main one writes files, rows and events.
        self._dist = _distributed_state(model)
        self._main = self._dist is None or self._dist.is_main_process
        self._rank = 0
        self._text_params: list = []

    def _emit(self, event: dict) -> None:
        if self._main:
            self.on_event(event)

    def _agree(self, flag: bool) -> bool:
        """True on every process when the flag is set on any (a collective: all must call it)."""
        if self._dist is None:
            return flag
        from accelerate.utils import reduce

        return bool(reduce(torch.tensor([float(flag)], device=self._dist.device), reduction="sum").item() > 0)

    def _main_first(self, work: Callable):
        """Run ``work`` on the main process first (it fills the caches), then on the others. A failure
        on the main process stops them all instead of leaving them at a barrier."""
        if self._dist is None:
            return work()
        result, error = None, None
        if self._main:
            try:
                result = work()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others are told
                error = exc
        if self._agree(error is not None):
            if error is not None:
                raise error
            raise NegaloraError("the main process stopped while preparing the training images")
        if not self._main:
            result = work()
        return result

    # -- public ---------------------------------------------------------------------------

    def start(self, config: TrainConfig, *, since: str | None = None, until: str | None = None) -> RunResult:
        """A new run on the store's rejects (and ``config.extra`` files)."""
        from negalora.train.dataset import collect_rejects, preflight

        config.check()
        candidates = collect_rejects(
            self.store, reasons=config.reasons or None, since=since, until=until, extra=[Path(p) for p in config.extra]
        )
        report = preflight(candidates, token=config.token, with_reasons=config.captions_with_reasons)
        self._emit(
            {
                "type": "preflight",
                "images": len(report.images),
                "refused": [{"path": str(r.path), "reason": r.reason} for r in report.refused],
                "warnings": report.warnings,
            }
        )
        if not report.images:
            raise NegaloraError("no training images: reject some images first (or pass files to train on)")
        if not config.validation_prompts:
            config = _with_validation_prompts(config, self.model)
        run_id = new_run_id()
        if self._main:
            run_dir = self.home.runs / run_id
            (run_dir / "checkpoints").mkdir(parents=True)
            atomic_write_text(run_dir / "config.json", config.to_json())
            dataset = {
                "images": [{**asdict(i), "path": str(i.path)} for i in report.images],
                "refused": [{"path": str(r.path), "reason": r.reason} for r in report.refused],
                "warnings": report.warnings,
                "model": {"name": self.model.name, "location": self.model.location, "sha256": self.model.sha256},
            }
            atomic_write_text(run_dir / "dataset.json", json.dumps(dataset, indent=2))
            model_id = self.store.ensure_model(
                self.model.name, self.model.source, self.model.location, self.model.sha256
            )
            self.store.create_run(run_id, model_id, config.to_json(), len(report.images))
        if self._dist is not None:  # one run: the main process's id
            from accelerate.utils import broadcast_object_list

            run_id = broadcast_object_list([run_id])[0]
        return self._run(run_id, config, report.images, start_step=0)

    def resume(self, run_id: str) -> RunResult:
        """Continue a run from its last checkpoint; the step count keeps counting."""
        from negalora.train.dataset import TrainImage

        row = self.store.run(run_id)
        run_dir = self.home.runs / run_id
        config = TrainConfig.from_dict(json.loads(row["config"]))
        dataset = json.loads((run_dir / "dataset.json").read_text(encoding="utf-8"))
        if dataset["model"]["sha256"] != self.model.sha256:
            raise NegaloraError(
                f"run {run_id} was trained on model {dataset['model']['name']}; load that model to resume it"
            )
        images = [TrainImage(**{**i, "path": Path(i["path"])}) for i in dataset["images"]]
        checkpoints = self.store.checkpoints(run_id)
        start = checkpoints[-1]["step"] if checkpoints else 0
        if start >= config.steps:
            raise NegaloraError(f"run {run_id} already finished its {config.steps} steps")
        if self._main:
            self.store.update_run(run_id, status="running", message="")
        return self._run(run_id, config, images, start_step=start, resume_from=checkpoints[-1] if checkpoints else None)

    # -- the run --------------------------------------------------------------------------

    def _log(self, run_dir: Path, line: str) -> None:
        if not self._main:
            return
        with open(run_dir / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}\n")

    def _prepare_samples(self, config: TrainConfig, images) -> tuple[list[list[Sample]], list[list[Sample]], dict]:
        """Latents for every image (and its mirror when flipping), the class images' latents when
        preserving the prior, and embeddings for every caption."""
        from negalora.train.buckets import make_buckets, nearest_bucket
        from negalora.train.dataset import load_rgb

        pipe = self.model.pipe
        resolution = config.resolution or self.model.native_size
        step = 64 if resolution >= 512 else 8
        buckets = make_buckets(resolution, step)
        latents = LatentCache(self.home.cache, self.model.sha256)
        texts = TextCache(self.home.cache, self.model.sha256)
        samples: list[list[Sample]] = []
        for n, img in enumerate(images):
            self.cancel.raise_if_cancelled()
            variants = []
            bucket = nearest_bucket(img.width, img.height, buckets)
            for flip in (False, True) if config.flip else (False,):
                variants.append(
                    latents.get(pipe.vae, lambda p=img.path: load_rgb(p), img.sha256, bucket, flip, img.caption)
                )
            samples.append(variants)
            self._emit({"type": "caching", "done": n + 1, "total": len(images)})
        from negalora.prompts import Conditioner

        conditioner = Conditioner(pipe)
        class_samples = (
            self._class_samples(config, len(images), latents, conditioner) if config.prior_preservation else []
        )
        # "" too: a caption longer than 75 tokens makes a longer embedding, and a batch that mixes
        # lengths is padded with the empty prompt's chunk, as Compel pads.
        captions = {s[0].caption for s in samples + class_samples} | {""}
        text = {c: texts.get(conditioner, c) for c in sorted(captions)}
        return samples, class_samples, text

    def _class_samples(
        self, config: TrainConfig, n_images: int, latents: LatentCache, conditioner
    ) -> list[list[Sample]]:
        """Class images from the base model (no LoRA yet), made once and kept in the cache."""
        import hashlib

        size = config.resolution or self.model.native_size
        count = config.class_images or n_images
        key = hashlib.sha256(f"{config.class_prompt}|{size}|{config.class_steps}".encode()).hexdigest()[:16]
        folder = self.home.cache / "class" / self.model.sha256[:16] / key
        out = []
        for k in range(count):
            self.cancel.raise_if_cancelled()
            path = folder / f"{k:05d}.png"
            if not path.exists():
                image = self._render(conditioner, config.class_prompt, "", seed=k, steps=config.class_steps, size=size)
                atomic_write_bytes(path, _png(image))
            from negalora.train.dataset import load_rgb

            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            load = lambda p=path: load_rgb(p)  # noqa: E731
            out.append([latents.get(self.model.pipe.vae, load, sha, (size, size), False, config.class_prompt)])
            self._emit({"type": "class_images", "done": k + 1, "total": count})
        return out

    @torch.no_grad()
    def _render(
        self,
        conditioner,
        prompt: str,
        negative: str,
        *,
        seed: int,
        steps: int,
        size: int,
        guidance: float = 7.0,
        negative_pass: bool = False,
    ):
        """One image from the pipeline as it stands: with the LoRA attached on both passes, or with
        ``negative_pass`` on the negative pass only (the app's own code for it)."""
        from contextlib import nullcontext

        from negalora.generate import split_conditioning
        from negalora.lora_passes import negative_pass as on_negative_pass
        from negalora.schedulers import DEFAULT_SCHEDULER, make_scheduler

        pipe = self.model.pipe
        pipe.scheduler = make_scheduler(DEFAULT_SCHEDULER, self.model.scheduler_config)
        if negative_pass:
            cond = split_conditioning(conditioner, pipe, prompt, negative)
        else:
            cond = conditioner.encode(prompt, negative)
        kwargs = {k: v.to(pipe.unet.dtype) for k, v in cond.pipeline_kwargs().items()}
        with on_negative_pass(pipe, text_encoders=False) if negative_pass else nullcontext():
            return pipe(
                **kwargs,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(seed),
                width=size,
                height=size,
            ).images[0]

    def _epoch_batches(self, config: TrainConfig, samples, epoch: int, stream: int) -> list[list[int]]:
        """One epoch's batches: each image once, batches never mixing buckets, all order seeded by
        (seed, epoch) so a resumed run sees the same batches."""
        key = (id(samples), epoch, stream)
        if key not in self._batches:
            by_bucket: dict[tuple, list[int]] = {}
            for i, variants in enumerate(samples):
                by_bucket.setdefault(tuple(variants[0].latents.shape), []).append(i)
            g = _seeded(config.seed, epoch, 7 + 100 * stream)
            batches = []
            for shape in sorted(by_bucket):
                members = by_bucket[shape]
                order = [members[int(j)] for j in torch.randperm(len(members), generator=g)]
                batches += [order[k : k + config.batch] for k in range(0, len(order), config.batch)]
            self._batches = {k: v for k, v in self._batches.items() if k[1] >= epoch - 1}  # keep it small
            self._batches[key] = [batches[int(j)] for j in torch.randperm(len(batches), generator=g)]
        return self._batches[key]

    def _batch(self, config: TrainConfig, samples, text, step: int, micro: int, world: int, rank: int, stream=0):
        """The micro-batch for (step, micro). ``stream`` 1 is the class images' own random stream."""
        per_epoch = len(self._epoch_batches(config, samples, 0, stream))
        index = ((step - 1) * config.grad_accum + micro) * world + rank
        epoch, pos = divmod(index, per_epoch)
        members = self._epoch_batches(config, samples, epoch, stream)[pos]
        chosen = []
        for j, i in enumerate(members):
            variants = samples[i]
            pick = int(torch.randint(len(variants), (1,), generator=_seeded(config.seed, index, j, 11 + 100 * stream)))
            chosen.append(variants[pick])
        latents = torch.stack([s.latents for s in chosen])
        time_ids = torch.stack([s.time_ids for s in chosen])
        if config.train_text_encoder:  # the encoders are learning: their outputs are made in _loss
            return latents, time_ids, [s.caption for s in chosen]
        embeds = [text[s.caption][0] for s in chosen]
        longest = max(e.shape[0] for e in embeds)
        if any(e.shape[0] != longest for e in embeds):
            empty = text[""][0]
            embeds = [torch.cat([e] + [empty] * ((longest - e.shape[0]) // empty.shape[0])) for e in embeds]
        embeds = torch.stack(embeds)
        pooled = torch.stack([text[s.caption][1] for s in chosen])
        return latents, time_ids, embeds, pooled

    def _loss(self, unet, noise_scheduler, config, batch, step: int, micro: int, device, weight_dtype, stream=0):
        if len(batch) == 3:  # captions: encode them with the LoRA'd text encoders, with gradients
            latents, time_ids, captions = batch
            embeds, _, pooled, _ = self.model.pipe.encode_prompt(
                captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            batch = (latents, time_ids, embeds, pooled)
        latents, time_ids, embeds, pooled = (t.to(device) for t in batch)
        # each process draws its own noise (rank 0 keeps the single-process stream)
        g = _seeded(config.seed, step, micro, 3 + 100 * stream, *((self._rank,) if self._rank else ()))
        noise = torch.randn(latents.shape, generator=g).to(device)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn(
                (latents.shape[0], latents.shape[1], 1, 1), generator=g
            ).to(device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g)
        timesteps = timesteps.to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        pred = unet(
            noisy.to(weight_dtype),
            timesteps,
            embeds.to(weight_dtype),
            added_cond_kwargs={"time_ids": time_ids.to(weight_dtype), "text_embeds": pooled.to(weight_dtype)},
            return_dict=False,
        )[0]
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        if config.min_snr_gamma is None:
            return F.mse_loss(pred.float(), target.float(), reduction="mean")
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.stack([snr, config.min_snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
        weights = weights / (snr + 1 if noise_scheduler.config.prediction_type == "v_prediction" else snr)
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)) * weights
        return loss.mean()

    def _optimizer(self, config: TrainConfig, params, device):
        if config.optimizer == "adamw8bit":
            if device.type != "cuda":
                raise NegaloraError("8-bit AdamW needs a CUDA GPU; use --optimizer adamw")
            try:
                import bitsandbytes as bnb
            except ImportError as exc:
                raise NegaloraError("8-bit AdamW needs bitsandbytes: pip install -e '.[cuda]'") from exc
            return bnb.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
        # fused on CUDA; elsewhere the multi-tensor kernels (a LoRA is many small tensors, and the one-by-one
        # loop that is torch's default on the CPU costs more Python than arithmetic)
        cuda = device.type == "cuda"
        return torch.optim.AdamW(
            params, lr=config.lr, weight_decay=config.weight_decay, fused=cuda or None, foreach=None if cuda else True
        )

    def _run(self, run_id, config: TrainConfig, images, *, start_step: int, resume_from: dict | None = None):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        run_dir = self.home.runs / run_id
        pipe = self.model.pipe
        mixed = _mixed_precision(config, self.model.placement.device)
        weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed, torch.float32)
        status, message, last_loss = "failed", "", None
        unet = pipe.unet
        encoders = [getattr(pipe, n) for n in TEXT_ENCODERS] if config.train_text_encoder else []
        self._frozen = ("vae",) if encoders else ("vae", *TEXT_ENCODERS)
        accelerator = None
        try:
            if getattr(unet, "peft_config", None):
                # A LoRA left from generation would poison the caches and join the optimizer.
                pipe.unload_lora_weights()
            accelerator = _accelerator(mixed, self.model.placement.device)
            device = accelerator.device
            self._log(
                run_dir,
                f"{'resume at step ' + str(start_step) if start_step else 'start'} on {device} ({mixed})"
                + (f", {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""),
            )
            samples, class_samples, text = self._main_first(lambda: self._prepare_samples(config, images))
            # What no longer changes leaves the GPU while the LoRA trains.
            _move(pipe, self._frozen, "cpu")
            unet.to(device, dtype=weight_dtype)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)  # the LoRA's initial weights depend on the run's seed only
                params = add_lora(unet, config)
                self._text_params = []
                for encoder in encoders:
                    encoder.to(device, dtype=weight_dtype)
                    self._text_params += add_lora(encoder, config, text=True)
                    encoder.train()
                params += self._text_params
            if resume_from is not None:
                saved = read_resume_lora(_state_path(Path(resume_from["path"])))
                for name, part in (("unet", unet), *zip(TEXT_ENCODERS, encoders, strict=False)):
                    if name not in saved:
                        raise NegaloraError(f"{resume_from['path']}: the resume state has no LoRA for the {name}")
                    load_peft_state(part, saved[name])
            if config.gradient_checkpointing:
                unet.enable_gradient_checkpointing()
            optimizer = self._optimizer(config, params, device)
            resume_meta = None
            if resume_from is not None:
                resume_meta = load_resume_state(_state_path(Path(resume_from["path"])), optimizer)
            lr_schedule = get_scheduler(
                config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
                for _ in range(start_step):
                    lr_schedule.step()  # replay the schedule to the resumed step
            unet, optimizer = accelerator.prepare(unet, optimizer)
            # prepare() wraps the shared UNet's forward in autocast with fp32 outputs; the loss already runs
            # under accelerator.autocast(), and the wrapper would break generation (bf16 VAE, fp32 latents).
            accelerator.unwrap_model(unet, keep_fp32_wrapper=False)
            if accelerator.scaler is not None and resume_meta and resume_meta.get("scaler"):
                accelerator.scaler.load_state_dict(resume_meta["scaler"])  # fp16: the loss scale goes on too
            noise_scheduler = DDPMScheduler.from_config(self.model.scheduler_config)
            status, message, last_loss = self._loop(
                run_id,
                config,
                accelerator,
                unet,
                optimizer,
                lr_schedule,
                noise_scheduler,
                (samples, class_samples),
                text,
                start_step,
                weight_dtype,
                params,
            )
        except Cancelled:
            status, message = "cancelled", "cancelled by the user before the first step"
        except DiskFull as exc:
            # Paused, not failed: the last good checkpoint and its resume state are whole.
            status, message = "paused", f"{exc}; free some space, then resume the run"
        except NegaloraError as exc:
            status, message = "failed", str(exc)
            raise
        except torch.cuda.OutOfMemoryError:
            status = "failed"
            message = "out of GPU memory: lower the batch or resolution, or turn on gradient checkpointing"
            raise NegaloraError(message) from None
        except Exception as exc:
            status, message = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            # The shared pipeline first, so a failing database write cannot leave it half-trained.
            raw = accelerator.unwrap_model(unet, keep_fp32_wrapper=False) if accelerator else unet
            _remove_lora(raw)
            raw.to(dtype=self.model.placement.dtype)
            for encoder in encoders:
                _remove_lora(encoder)
                encoder.to(dtype=self.model.placement.dtype)
            _move(pipe, ("vae", *TEXT_ENCODERS), self.model.placement.device)
            if self.model.placement.vae_dtype != pipe.vae.dtype:
                pipe.vae.to(dtype=self.model.placement.vae_dtype)
            steps_done = max([c["step"] for c in self.store.checkpoints(run_id)] or [0])
            try:
                if self._main:
                    self.store.update_run(
                        run_id, status=status, message=message, steps_done=steps_done, final_loss=last_loss
                    )
                self._log(run_dir, f"{status} at step {steps_done} {message}".strip())
            except (DiskFull, OSError) as exc:
                # A disk too full to record the outcome must not hide it: the result and event still go out.
                message = f"{message} (the run's status could not be saved: {exc})".strip()
        result = RunResult(
            run_id, status, steps_done, last_loss, [c["path"] for c in self.store.checkpoints(run_id)], message
        )
        self._emit({"type": "run_finished", "run": run_id, **asdict(result)})
        return result

    def _loop(
        self,
        run_id,
        config,
        accelerator,
        unet,
        optimizer,
        lr_schedule,
        noise_scheduler,
        samples,
        text,
        start_step,
        weight_dtype,
        params,
    ):
        device = accelerator.device
        world, rank = accelerator.num_processes, accelerator.process_index
        self._rank = rank
        instance, class_samples = samples

        def anywhere(flag: bool) -> bool:
            """True when the flag is set in any process: they must all skip, stop or go on together."""
            if world == 1:
                return flag
            return bool(accelerator.reduce(torch.tensor([float(flag)], device=device), reduction="sum").item() > 0)

        unet.train()
        # Only the loss's forward and backward go through the compiled module; it shares the UNet's
        # parameters, so checkpoints, validation and generation use the plain UNet as before.
        forward = torch.compile(unet, backend=config.compile) if config.compile else unet
        nan_run = 0
        last_loss = None
        t_start = time.monotonic()
        losses = _LossLog(self.store, run_id, enabled=self._main)
        try:
            for step in range(start_step + 1, config.steps + 1):
                if anywhere(self.cancel.cancelled):
                    losses.flush()
                    self._checkpoint(run_id, config, accelerator, unet, optimizer, step - 1)
                    return "cancelled", "cancelled by the user", last_loss
                faults.inject("train_step")
                total = torch.zeros((), device=device)
                for micro in range(config.grad_accum):
                    batch = self._batch(config, instance, text, step, micro, world, rank)
                    last_micro = micro == config.grad_accum - 1
                    # gradients are averaged across processes once per step, on the last micro-batch
                    with accelerator.autocast(), nullcontext() if last_micro else accelerator.no_sync(unet):
                        loss = self._loss(forward, noise_scheduler, config, batch, step, micro, device, weight_dtype)
                        if class_samples:  # prior preservation: the base model's own images, beside the rejects
                            cbatch = self._batch(config, class_samples, text, step, micro, world, rank, stream=1)
                            closs = self._loss(
                                forward, noise_scheduler, config, cbatch, step, micro, device, weight_dtype, 1
                            )
                            loss = loss + config.prior_weight * closs
                        # A non-finite loss is not checked here: its gradients are not finite either, and
                        # the step below is skipped on them. Checking here would stop the GPU every micro-batch.
                        accelerator.backward(loss / config.grad_accum)
                    total = total + loss.detach().float() / config.grad_accum
                if world > 1:
                    # The text encoders run outside the DDP wrapper, so their LoRA gradients are averaged here.
                    for p in self._text_params:
                        if p.grad is not None:
                            p.grad = accelerator.reduce(p.grad, reduction="mean")
                    total = accelerator.reduce(total, reduction="mean")
                norm = accelerator.clip_grad_norm_(params, config.max_grad_norm or float("inf"))  # a tensor: no sync
                # The one host sync of a step: its loss, and whether it and the gradients are finite (a finite
                # loss with non-finite gradients, half precision, must not reach the weights either).
                parts = [total] if norm is None else [total, torch.as_tensor(norm, device=total.device).float()]
                loss_value, *norm_value = torch.stack(parts).tolist()
                finite = not anywhere(not all(math.isfinite(v) for v in (loss_value, *norm_value)))
                if not finite:
                    if accelerator.scaler is not None:
                        # fp16: the scaler skips a step with inf gradients itself and lowers its loss scale,
                        # and it must see every step (it unscaled these gradients)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    lr_schedule.step()
                    if accelerator.scaler is not None and math.isfinite(loss_value):
                        # an overflow with a finite loss is the scaler's normal calibration, not a NaN to count
                        self._log(self.home.runs / run_id, f"step {step}: fp16 overflow, loss scale lowered")
                        continue
                    nan_run += 1
                    self._emit({"type": "nan_skip", "run": run_id, "step": step, "in_a_row": nan_run})
                    self._log(self.home.runs / run_id, f"step {step}: non-finite loss or gradients, skipped")
                    if nan_run >= config.max_nan_steps:
                        losses.flush()
                        return "stopped_nan", f"{nan_run} non-finite losses in a row at step {step}", last_loss
                    continue
                nan_run = 0
                optimizer.step()
                lr = lr_schedule.get_last_lr()[0]
                lr_schedule.step()
                optimizer.zero_grad(set_to_none=True)
                last_loss = loss_value
                losses.add(step, loss_value, lr)
                elapsed = time.monotonic() - t_start
                done_here = step - start_step
                self._emit(
                    {
                        "type": "train_step",
                        "run": run_id,
                        "step": step,
                        "steps": config.steps,
                        "loss": loss_value,
                        "lr": lr,
                        "it_s": done_here / elapsed if elapsed > 0 else 0.0,
                        "eta_s": elapsed / done_here * (config.steps - step),
                        "peak_mem_mb": peak_memory_mb(device),
                    }
                )
                if step % config.checkpoint_every == 0 or step == config.steps:
                    losses.flush()  # a checkpoint's losses are in the database before the checkpoint is
                    self._checkpoint(run_id, config, accelerator, unet, optimizer, step)
            losses.flush()
            return "done", "", last_loss
        finally:
            losses.flush_quietly()  # a crash keeps the curve up to its step

    # -- checkpoints ----------------------------------------------------------------------

    def _checkpoint(self, run_id, config, accelerator, unet, optimizer, step: int) -> None:
        if step <= 0:
            return
        # The main process decides for all: each reading the database could see its new row or not.
        exists = self._main and any(c["step"] == step for c in self.store.checkpoints(run_id))
        if self._agree(exists):
            return
        try:
            if self._main:
                self._write_checkpoint(run_id, config, accelerator, unet, optimizer, step)
        finally:
            accelerator.wait_for_everyone()  # no process runs ahead while the main one writes

    def _write_checkpoint(self, run_id, config, accelerator, unet, optimizer, step: int) -> None:
        path = self.home.runs / run_id / "checkpoints" / f"step-{step:06d}.safetensors"
        try:
            self._write_checkpoint_files(run_id, config, accelerator, unet, optimizer, step, path)
        except NegaloraError:
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise disk_full(getattr(exc, "filename", None) or path, exc) from exc  # the file that did not fit
            raise

    def _write_checkpoint_files(self, run_id, config, accelerator, unet, optimizer, step: int, path: Path) -> None:
        run_dir = self.home.runs / run_id
        raw = accelerator.unwrap_model(unet)
        pipe = self.model.pipe
        encoders = tuple(getattr(pipe, n) for n in TEXT_ENCODERS) if config.train_text_encoder else ()
        save_diffusers_lora(raw, path, config, text_encoders=encoders)
        lora = {"unet": peft_state(raw), **{n: peft_state(e) for n, e in zip(TEXT_ENCODERS, encoders, strict=False)}}
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        save_resume_state(
            _state_path(path), step=step, optimizer=optimizer, lora=lora, scaler=scaler, extra={"run": run_id}
        )
        self.store.add_checkpoint(run_id, step, path, sha256_file(path))
        self.store.update_run(run_id, steps_done=step)
        self._log(run_dir, f"checkpoint step {step}")
        self._emit({"type": "checkpoint", "run": run_id, "step": step, "path": str(path)})
        self._validate(run_id, config, raw, step)
        self._prune(run_id, config)

    def _prune(self, run_id: str, config: TrainConfig) -> None:
        if config.keep_last <= 0:
            return
        kept = self.store.checkpoints(run_id)
        best = self.store.run(run_id).get("best_step")
        for old in kept[: -config.keep_last]:
            if old["step"] == best:
                continue  # the artist chose it: keep-last-K never removes it
            # The row first: a kill between the two leaves a file that reconcile sweeps, never a row without its file.
            self.store.mark_checkpoint_removed(run_id, old["step"])
            Path(old["path"]).unlink(missing_ok=True)
            _state_path(Path(old["path"])).unlink(missing_ok=True)

    @torch.no_grad()
    def _validate(self, run_id: str, config: TrainConfig, unet, step: int) -> None:
        """Render the fixed test prompts with ``wrong`` as the negative, on the LoRA as it stands, the
        way the run says (the negative pass by default) at the CFG its comparisons use."""
        if not config.validation_prompts or config.validation_steps < 1:
            return
        from negalora.prompts import Conditioner

        pipe = self.model.pipe
        parts = [unet] + ([getattr(pipe, n) for n in TEXT_ENCODERS] if config.train_text_encoder else [])
        was_training = unet.training
        for part in parts:
            part.eval()
        _move(pipe, self._frozen, self.model.placement.device)
        out_dir = self.home.runs / run_id / "samples"
        out_dir.mkdir(parents=True, exist_ok=True)
        conditioner = Conditioner(pipe)
        size = config.resolution or self.model.native_size
        guidance = validation_guidance(config, self.model)
        paths = []
        for k, prompt in enumerate(config.validation_prompts):
            image = self._render(
                conditioner,
                prompt,
                config.token,
                seed=config.validation_seed,
                steps=config.validation_steps,
                size=size,
                guidance=guidance,
                negative_pass=config.validation_passes == "negative",
            )
            path = out_dir / f"step-{step:06d}-{k}.png"
            atomic_write_bytes(path, _png(image), fault="image_write")
            paths.append(str(path))
        _move(pipe, self._frozen, "cpu")
        if was_training:
            for part in parts:
                part.train()
        self._emit(
            {
                "type": "validation",
                "run": run_id,
                "step": step,
                "paths": paths,
                "prompts": list(config.validation_prompts),
                "passes": config.validation_passes,
                "guidance": guidance,
            }
        )


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _state_path(lora_path: Path) -> Path:
    return lora_path.with_name(lora_path.name.replace(".safetensors", ".state.safetensors"))


def _move(pipe, names, device) -> None:
    for name in names:
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(device)


def _remove_lora(model) -> None:
    """Leave the shared pipeline as it was: no adapter, nothing trainable (a diffusers UNet or a
    transformers text encoder: their peft methods are named differently)."""
    remove = getattr(model, "delete_adapters", None) or getattr(model, "delete_adapter", None)
    try:
        remove(["default"])
    except (ValueError, KeyError, TypeError):
        pass
    model.requires_grad_(False)
    model.eval()
    if hasattr(model, "disable_gradient_checkpointing") and getattr(model, "is_gradient_checkpointing", False):
        model.disable_gradient_checkpointing()


def validation_guidance(config: TrainConfig, model: LoadedModel) -> float:
    from negalora.compare.prompt_sets import default_guidance

    return config.validation_guidance if config.validation_guidance is not None else default_guidance(model.source)


def _with_validation_prompts(config: TrainConfig, model: LoadedModel) -> TrainConfig:
    from dataclasses import replace

    prompts = DEMO_VALIDATION_PROMPTS if model.source == "demo" else DEFAULT_VALIDATION_PROMPTS
    return replace(config, validation_prompts=prompts)
