"""The DreamBooth LoRA trainer for the "wrong" token.

One run: pre-flight the rejects, cache latents and text embeddings, train a peft LoRA on the UNet
(accelerate places it and handles mixed precision), write checkpoints with their resume state and
validation images, and log a loss for every step. A run resumes from its last checkpoint and, on
the CPU, ends with the same weights as an uninterrupted one.

The parts that need no model are beside it: the seeded batch schedule (schedule.py), the loss
(objective.py), the processes' collectives (distributed.py) and the checkpoint files (checkpoints.py).
"""

import json
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from negalora import faults
from negalora.atomic import atomic_write_text
from negalora.cancel import CancelToken
from negalora.errors import Cancelled, DiskFull, NegaloraError
from negalora.home import Home
from negalora.models.loader import LoadedModel
from negalora.store import Store
from negalora.train import checkpoints
from negalora.train.checkpoints import TEXT_ENCODERS
from negalora.train.checkpoints import move as _move
from negalora.train.checkpoints import validation_guidance as validation_guidance  # public here too
from negalora.train.config import TrainConfig
from negalora.train.distributed import (
    any_process,
    distributed_state,
    is_main,
    main_first,
    make_accelerator,
    mixed_precision,
    weight_dtype,
)
from negalora.train.lora import add_lora, lora_off
from negalora.train.objective import Batch, collate, denoising_loss, preference_loss, with_prior
from negalora.train.run import LossLog as _LossLog  # a name tests patch
from negalora.train.run import RunResult, TrainingRun, new_run_id, peak_memory_mb, shapes
from negalora.train.samples import prepare_samples
from negalora.train.schedule import Schedule, epoch_batches, noise_generator
from negalora.train.setup import make_optimizer, restore_pipeline

__all__ = ["RunResult", "Trainer", "TrainingRun", "new_run_id", "peak_memory_mb", "validation_guidance"]

DEFAULT_VALIDATION_PROMPTS = ("a photo of a person", "a landscape painting")
DEMO_VALIDATION_PROMPTS = ("a red circle on a blue background", "a yellow square on a black background")


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
        # Several processes (one per GPU): only the main one writes files, rows and events.
        self._dist = distributed_state(model)
        self._main = is_main(self._dist)
        self._rank = 0
        self._raw_unet = None  # the UNet under accelerate's wrapper: its LoRA is switched off for the reference
        self._margin = torch.zeros(())  # kto/dpo: the step's reward margin, summed over its micro-batches

    def _emit(self, event: dict) -> None:
        if self._main:
            self.on_event(event)

    # -- public ---------------------------------------------------------------------------

    def start(self, config: TrainConfig, *, since: str | None = None, until: str | None = None) -> RunResult:
        """A new run on the store's rejects (and ``config.extra`` files), or, for the preference
        objectives, on its picks and rejects (kto) or preferred pairs (dpo)."""
        from negalora.train.inputs import collect

        config.check()
        chosen = collect(self.store, config, since, until)
        self._emit(chosen.event())
        chosen.check()
        config = chosen.config
        if not config.validation_prompts:
            config = _with_validation_prompts(config, self.model)
        if config.liked and config.validation_passes == "negative":
            # a LoRA of what is liked is shown where it measured best: on the positive pass, the prompt
            # unchanged (docs/efficacy_preference.md)
            config = replace(config, validation_passes="positive")
        run_id = new_run_id()
        if self._main:
            run_dir = self.home.runs / run_id
            (run_dir / "checkpoints").mkdir(parents=True)
            atomic_write_text(run_dir / "config.json", config.to_json())
            atomic_write_text(run_dir / "dataset.json", json.dumps(chosen.dataset(self.model), indent=2))
            model_id = self.store.ensure_model(
                self.model.name, self.model.source, self.model.location, self.model.sha256
            )
            self.store.create_run(run_id, model_id, config.to_json(), len(chosen.images))
        if self._dist is not None:  # one run: the main process's id
            from accelerate.utils import broadcast_object_list

            run_id = broadcast_object_list([run_id])[0]
        return self._run(run_id, config, chosen.images, start_step=0, pairs=chosen.pairs)

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
        saved = self.store.checkpoints(run_id)
        start = saved[-1]["step"] if saved else 0
        if start >= config.steps:
            raise NegaloraError(f"run {run_id} already finished its {config.steps} steps")
        if self._main:
            self.store.update_run(run_id, status="running", message="")
        pairs = [(int(w), int(lo)) for w, lo in dataset.get("pairs", [])]
        return self._run(
            run_id, config, images, start_step=start, resume_from=saved[-1] if saved else None, pairs=pairs
        )

    # -- the run --------------------------------------------------------------------------

    def _log(self, run_dir: Path, line: str) -> None:
        if not self._main:
            return
        with open(run_dir / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}\n")

    def _epoch_batches(self, config: TrainConfig, samples, epoch: int, stream: int) -> list[list[int]]:
        """One epoch's batches: each image once, batches never mixing buckets, all order seeded by
        (seed, epoch) so a resumed run sees the same batches."""
        return epoch_batches(shapes(samples), config.batch, config.seed, epoch, stream)

    def _batch(self, run: TrainingRun, step: int, micro: int, stream: int = 0) -> Batch:
        """The micro-batch for (step, micro). ``stream`` 1 is the class images' own random stream."""
        accelerator = run.accelerator
        samples = run.class_samples if stream else run.samples
        picks = run.schedules[stream].at(step, micro, accelerator.num_processes, accelerator.process_index)
        if run.config.objective == "dpo" and not stream:  # the pairs' preferred images, then their rejected ones
            chosen = [samples[run.pairs[k][0]][v] for k, v in picks] + [samples[run.pairs[k][1]][v] for k, v in picks]
            return collate(chosen, run.text)
        # while the encoders learn, their outputs are made in _loss
        batch = collate([samples[i][v] for i, v in picks], run.text, encode_text=run.config.train_text_encoder)
        if run.config.objective == "kto" and not stream:
            batch = replace(batch, desirable=torch.tensor([run.desirable[i] for i, _ in picks]))
        return batch

    def _loss(self, unet, noise_scheduler, config, batch: Batch, step: int, micro: int, device, weight_dtype, stream=0):
        if not batch.encoded:  # captions: encode them with the LoRA'd text encoders, with gradients
            embeds, _, pooled, _ = self.model.pipe.encode_prompt(
                list(batch.captions),  # pyright: ignore[reportArgumentType] (typed str; a list is documented)
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )
            batch = batch.with_text(embeds, pooled)
        generator = noise_generator(config.seed, step, micro, stream, self._rank)
        if config.preference:
            raw = self._raw_unet if self._raw_unet is not None else unet
            loss, margin = preference_loss(
                unet,
                lambda: lora_off(raw),
                noise_scheduler,
                batch.to(device),
                generator,
                objective=config.objective,
                beta=config.preference_beta,
                desirable_weight=config.desirable_weight,
                undesirable_weight=config.undesirable_weight,
                weight_dtype=weight_dtype,
                noise_offset=config.noise_offset,
            )
            self._margin = self._margin + margin / config.grad_accum
            return loss
        return denoising_loss(
            unet,
            noise_scheduler,
            batch.to(device),
            generator,
            weight_dtype=weight_dtype,
            noise_offset=config.noise_offset,
            min_snr_gamma=config.min_snr_gamma,
        )

    def _run(self, run_id, config: TrainConfig, images, *, start_step: int, resume_from: dict | None = None, pairs=()):
        pipe = self.model.pipe
        mixed = mixed_precision(config.mixed_precision, self.model.placement.device)
        encoders = [getattr(pipe, n) for n in TEXT_ENCODERS] if config.train_text_encoder else []
        frozen = ("vae",) if encoders else ("vae", *TEXT_ENCODERS)
        run_dir = self.home.runs / run_id
        run = TrainingRun(run_id, config, run_dir, start_step, mixed, weight_dtype(mixed), pipe.unet, encoders, frozen)
        run.pairs, run.desirable = list(pairs), [i.label == "pick" for i in images]
        status, message, last_loss = "failed", "", None
        try:
            self._setup(run, images, resume_from)
            status, message, last_loss = self._loop(run)
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
            restore_pipeline(self.model, run)
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

    def _setup(self, run: TrainingRun, images, resume_from: dict | None) -> None:
        """The run's samples, LoRA (resumed when ``resume_from``), optimizer and schedules, placed by accelerate."""
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        config, pipe, unet = run.config, self.model.pipe, run.unet
        if getattr(unet, "peft_config", None):
            # A LoRA left from generation would poison the caches and join the optimizer.
            pipe.unload_lora_weights()
        run.accelerator = accelerator = make_accelerator(run.mixed, self.model.placement.device)
        device = accelerator.device
        self._log(
            run.dir,
            f"{'resume at step ' + str(run.start_step) if run.start_step else 'start'} on {device} ({run.mixed})"
            + (f", {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""),
        )
        run.samples, run.class_samples, run.text = main_first(
            lambda: prepare_samples(self.model, self.home, config, images, self.cancel, self._emit), self._dist
        )
        # What no longer changes leaves the GPU while the LoRA trains.
        _move(pipe, run.frozen, "cpu")
        unet.to(device, dtype=run.weight_dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the LoRA's initial weights depend on the run's seed only
            params = add_lora(unet, config)
            for encoder in run.encoders:
                encoder.to(device, dtype=run.weight_dtype)
                run.text_params += add_lora(encoder, config, text=True)
                encoder.train()
            run.params = params + run.text_params
        if resume_from is not None:
            parts = {"unet": unet, **dict(zip(TEXT_ENCODERS, run.encoders, strict=False))}
            checkpoints.restore_lora(resume_from["path"], parts)
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        optimizer = make_optimizer(config, run.params, device)
        resume_meta = checkpoints.restore_optimizer(resume_from["path"], optimizer) if resume_from is not None else None
        run.lr_schedule = get_scheduler(
            config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
            for _ in range(run.start_step):
                run.lr_schedule.step()  # replay the schedule to the resumed step
        run.unet, run.optimizer = accelerator.prepare(unet, optimizer)
        # prepare() wraps the shared UNet's forward in autocast with fp32 outputs; the loss already runs
        # under accelerator.autocast(), and the wrapper would break generation (bf16 VAE, fp32 latents).
        self._raw_unet = accelerator.unwrap_model(run.unet, keep_fp32_wrapper=False)
        if accelerator.scaler is not None and resume_meta and resume_meta.get("scaler"):
            accelerator.scaler.load_state_dict(resume_meta["scaler"])  # fp16: the loss scale goes on too
        run.noise_scheduler = DDPMScheduler.from_config(self.model.scheduler_config)
        run.schedules = tuple(
            Schedule(
                shapes(s),
                [len(v) for v in s],
                batch=config.batch,
                grad_accum=config.grad_accum,
                seed=config.seed,
                stream=k,
            )
            # dpo: the schedule is over pairs (each the shape of its preferred image; both share a bucket)
            for k, s in enumerate((_scheduled(run), run.class_samples))
        )

    def _loop(self, run: TrainingRun) -> tuple[str, str, float | None]:
        config, accelerator, optimizer, lr_schedule = run.config, run.accelerator, run.optimizer, run.lr_schedule
        self._rank = accelerator.process_index
        run.unet.train()
        # Only the loss's forward and backward go through the compiled module; it shares the UNet's
        # parameters, so checkpoints, validation and generation use the plain UNet as before.
        forward = torch.compile(run.unet, backend=config.compile) if config.compile else run.unet
        nan_run = 0
        last_loss = None
        t_start = time.monotonic()
        losses = _LossLog(self.store, run.id, enabled=self._main)
        try:
            for step in range(run.start_step + 1, config.steps + 1):
                # the processes must all skip, stop or go on together
                if any_process(self.cancel.cancelled, accelerator):
                    losses.flush()
                    self._checkpoint(run, step - 1)
                    return "cancelled", "cancelled by the user", last_loss
                faults.inject("train_step")
                total = self._accumulate(run, forward, step)
                norm = accelerator.clip_grad_norm_(run.params, config.max_grad_norm or float("inf"))  # no sync
                # The one host sync of a step: its loss, and whether it and the gradients are finite (a finite
                # loss with non-finite gradients, half precision, must not reach the weights either).
                parts = [total] if norm is None else [total, torch.as_tensor(norm, device=total.device).float()]
                if config.preference:  # its reward margin rides on the same sync
                    parts.append(self._margin.to(total.device).float())
                loss_value, *norm_value = torch.stack(parts).tolist()
                margin = norm_value.pop() if config.preference else None
                finite = not any_process(not all(math.isfinite(v) for v in (loss_value, *norm_value)), accelerator)
                if not finite:
                    if accelerator.scaler is not None:
                        # fp16: the scaler skips a step with inf gradients itself and lowers its loss scale,
                        # and it must see every step (it unscaled these gradients)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    lr_schedule.step()
                    if accelerator.scaler is not None and math.isfinite(loss_value):
                        # an overflow with a finite loss is the scaler's normal calibration, not a NaN to count
                        self._log(run.dir, f"step {step}: fp16 overflow, loss scale lowered")
                        continue
                    nan_run += 1
                    self._emit({"type": "nan_skip", "run": run.id, "step": step, "in_a_row": nan_run})
                    self._log(run.dir, f"step {step}: non-finite loss or gradients, skipped")
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
                self._report_step(run, step, loss_value, lr, time.monotonic() - t_start, margin)
                if step % config.checkpoint_every == 0 or step == config.steps:
                    losses.flush()  # a checkpoint's losses are in the database before the checkpoint is
                    self._checkpoint(run, step)
            losses.flush()
            return "done", "", last_loss
        finally:
            losses.flush_quietly()  # a crash keeps the curve up to its step

    def _accumulate(self, run: TrainingRun, forward, step: int) -> torch.Tensor:
        """Forward and backward of the step's micro-batches; returns the step's loss, still on the device."""
        config, accelerator = run.config, run.accelerator
        device = accelerator.device
        total = torch.zeros((), device=device)
        self._margin = torch.zeros((), device=device)
        for micro in range(config.grad_accum):
            batch = self._batch(run, step, micro)
            last_micro = micro == config.grad_accum - 1
            # gradients are averaged across processes once per step, on the last micro-batch
            with accelerator.autocast(), nullcontext() if last_micro else accelerator.no_sync(run.unet):
                loss = self._loss(forward, run.noise_scheduler, config, batch, step, micro, device, run.weight_dtype)
                if run.class_samples:  # prior preservation: the base model's own images, beside the rejects
                    cbatch = self._batch(run, step, micro, stream=1)
                    closs = self._loss(
                        forward, run.noise_scheduler, config, cbatch, step, micro, device, run.weight_dtype, 1
                    )
                    loss = with_prior(loss, closs, config.prior_weight)
                # A non-finite loss is not checked here: its gradients are not finite either, and
                # the step below is skipped on them. Checking here would stop the GPU every micro-batch.
                accelerator.backward(loss / config.grad_accum)
            total = total + loss.detach().float() / config.grad_accum
        if accelerator.num_processes > 1:
            # The text encoders run outside the DDP wrapper, so their LoRA gradients are averaged here.
            for p in run.text_params:
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
            total = accelerator.reduce(total, reduction="mean")
        return total

    def _report_step(
        self, run: TrainingRun, step: int, loss: float, lr: float, elapsed: float, margin: float | None = None
    ) -> None:
        done_here = step - run.start_step
        self._emit(
            {
                "type": "train_step",
                "run": run.id,
                "step": step,
                "steps": run.config.steps,
                "loss": loss,
                "lr": lr,
                "it_s": done_here / elapsed if elapsed > 0 else 0.0,
                "eta_s": elapsed / done_here * (run.config.steps - step),
                "peak_mem_mb": peak_memory_mb(run.accelerator.device),
                **({"reward_margin": margin} if margin is not None else {}),
            }
        )

    # -- checkpoints ----------------------------------------------------------------------

    def _checkpoint(self, run: TrainingRun, step: int) -> None:
        if step <= 0:
            return
        # The main process decides for all: each reading the database could see its new row or not.
        exists = self._main and any(c["step"] == step for c in self.store.checkpoints(run.id))
        if any_process(exists, self._dist):
            return
        try:
            if self._main:
                checkpoints.write(run, step, store=self.store, model=self.model, emit=self._emit, log=self._log)
        finally:
            run.accelerator.wait_for_everyone()  # no process runs ahead while the main one writes

    def _prune(self, run_id: str, config: TrainConfig) -> None:
        checkpoints.prune(self.store, run_id, config.keep_last)


def _scheduled(run: TrainingRun) -> list:
    """What stream 0's schedule draws from: the samples, or for dpo the pairs (as their preferred images)."""
    if run.config.objective == "dpo":
        return [run.samples[w] for w, _ in run.pairs]
    return run.samples


def _with_validation_prompts(config: TrainConfig, model: LoadedModel) -> TrainConfig:
    from dataclasses import replace

    prompts = DEMO_VALIDATION_PROMPTS if model.source == "demo" else DEFAULT_VALIDATION_PROMPTS
    return replace(config, validation_prompts=prompts)
