"""A run's checkpoints: the LoRA file (diffusers' format) with its resume state beside it, its rows,
the validation images a checkpoint is judged by, reading a resume state back, and keep-last-K pruning.

``run`` below is the trainer's ``TrainingRun``; these run on the main process only.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from negalora.atomic import atomic_write_bytes, disk_full, is_disk_full
from negalora.errors import NegaloraError
from negalora.hashing import sha256_file
from negalora.train.config import TrainConfig
from negalora.train.lora import load_peft_state, peft_state, save_diffusers_lora
from negalora.train.resume_state import load_resume_state, read_resume_lora, save_resume_state

if TYPE_CHECKING:
    from negalora.models.loader import LoadedModel
    from negalora.store import Store
    from negalora.train.run import TrainingRun

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}.safetensors"


def state_path(lora_path: Path) -> Path:
    """The resume state (optimizer, LoRA in peft's keys, loss scale) beside a checkpoint's LoRA file."""
    return lora_path.with_name(lora_path.name.replace(".safetensors", ".state.safetensors"))


@contextmanager
def disk_full_reported(path: Path) -> Iterator[None]:
    """A full disk while writing ``path`` (or a file it names) surfaces as the app's DiskFull."""
    try:
        yield
    except NegaloraError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full(getattr(exc, "filename", None) or path, exc) from exc  # the file that did not fit
        raise


def save(
    path: Path,
    unet,
    config: TrainConfig,
    *,
    step: int,
    optimizer,
    text_encoders: Sequence = (),
    scaler: dict | None = None,
    run_id: str,
) -> None:
    """The LoRA file at ``path``, then its resume state (``text_encoders``: both, when they learn too)."""
    save_diffusers_lora(unet, path, config, text_encoders=tuple(text_encoders))
    lora = {"unet": peft_state(unet), **{n: peft_state(e) for n, e in zip(TEXT_ENCODERS, text_encoders, strict=False)}}
    save_resume_state(state_path(path), step=step, optimizer=optimizer, lora=lora, scaler=scaler, extra={"run": run_id})


def restore_lora(path: Path, parts: Mapping[str, object]) -> None:
    """Load the LoRA weights saved beside checkpoint ``path`` into ``parts`` (name -> module)."""
    saved = read_resume_lora(state_path(Path(path)))
    for name, part in parts.items():
        if name not in saved:
            raise NegaloraError(f"{path}: the resume state has no LoRA for the {name}")
        load_peft_state(part, saved[name])


def restore_optimizer(path: Path, optimizer) -> dict:
    """The optimizer's state from beside checkpoint ``path``; returns the state's metadata (the loss scale)."""
    return load_resume_state(state_path(Path(path)), optimizer)


def prune(store, run_id: str, keep_last: int) -> None:
    """Remove all but the last ``keep_last`` checkpoints (0: keep all), never the one the artist chose."""
    if keep_last <= 0:
        return
    kept = store.checkpoints(run_id)
    best = store.run(run_id).get("best_step")
    for old in kept[:-keep_last]:
        if old["step"] == best:
            continue  # the artist chose it: keep-last-K never removes it
        # The row first: a kill between the two leaves a file that reconcile sweeps, never a row without its file.
        store.mark_checkpoint_removed(run_id, old["step"])
        Path(old["path"]).unlink(missing_ok=True)
        state_path(Path(old["path"])).unlink(missing_ok=True)


def write(
    run: "TrainingRun",
    step: int,
    *,
    store: "Store",
    model: "LoadedModel",
    emit: Callable[[dict], None],
    log: Callable[[Path, str], None],
) -> None:
    """Checkpoint ``step``: the files, their row, the validation images, then the pruning of old ones."""
    path = checkpoint_path(run.dir, step)
    with disk_full_reported(path):
        accelerator = run.accelerator
        raw = accelerator.unwrap_model(run.unet)
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        save(
            path,
            raw,
            run.config,
            step=step,
            optimizer=run.optimizer,
            text_encoders=run.encoders,
            scaler=scaler,
            run_id=run.id,
        )
        store.add_checkpoint(run.id, step, path, sha256_file(path))
        store.update_run(run.id, steps_done=step)
        log(run.dir, f"checkpoint step {step}")
        emit({"type": "checkpoint", "run": run.id, "step": step, "path": str(path)})
        validate(run, raw, step, model=model, emit=emit)
        prune(store, run.id, run.config.keep_last)


@torch.no_grad()
def validate(run: "TrainingRun", unet, step: int, *, model: "LoadedModel", emit: Callable[[dict], None]) -> None:
    """Render the fixed test prompts with ``wrong`` as the negative, on the LoRA as it stands, the
    way the run says (the negative pass by default) at the CFG its comparisons use. A LoRA of what
    is liked (KTO, DPO, picks) is shown the way it measured best: on the positive pass (the trainer's
    default for it), the prompt alone, no negative."""
    config = run.config
    if not config.validation_prompts or config.validation_steps < 1:
        return
    from negalora.prompts import Conditioner

    pipe = model.pipe
    parts = [unet, *run.encoders]
    was_training = unet.training
    for part in parts:
        part.eval()
    move(pipe, run.frozen, model.placement.device)
    out_dir = run.dir / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    conditioner = Conditioner(pipe)
    size = config.resolution or model.native_size
    guidance = validation_guidance(config, model)
    paths = []
    for k, prompt in enumerate(config.validation_prompts):
        image = render(
            model,
            conditioner,
            prompt,  # a liked LoRA too: the prompt unchanged, as compare and the experiment use it
            "" if config.liked else config.token,
            seed=config.validation_seed,
            steps=config.validation_steps,
            size=size,
            guidance=guidance,
            passes=config.validation_passes,
        )
        path = out_dir / f"step-{step:06d}-{k}.png"
        atomic_write_bytes(path, png(image), fault="image_write")
        paths.append(str(path))
    move(pipe, run.frozen, "cpu")
    if was_training:
        for part in parts:
            part.train()
    emit(
        {
            "type": "validation",
            "run": run.id,
            "step": step,
            "paths": paths,
            "prompts": list(config.validation_prompts),
            "passes": config.validation_passes,
            "guidance": guidance,
        }
    )


@torch.no_grad()
def render(
    model: "LoadedModel",
    conditioner,
    prompt: str,
    negative: str,
    *,
    seed: int,
    steps: int,
    size: int,
    guidance: float = 7.0,
    passes: str = "both",
):
    """One image from the pipeline as it stands: with the LoRA attached on both passes, or with
    ``passes`` "negative" or "positive" on that pass only (the app's own code for it). The class images of
    prior preservation are made with it too, before the LoRA is attached."""
    from negalora.generate import split_conditioning
    from negalora.lora_passes import negative_pass, positive_pass
    from negalora.schedulers import DEFAULT_SCHEDULER, make_scheduler

    pipe = model.pipe
    pipe.scheduler = make_scheduler(DEFAULT_SCHEDULER, model.scheduler_config)
    if passes == "negative":
        cond = split_conditioning(conditioner, pipe, prompt, negative)
    elif passes == "positive":
        cond = split_conditioning(conditioner, pipe, prompt, negative, lora_on="positive")
    else:
        cond = conditioner.encode(prompt, negative)
    kwargs = {k: v.to(pipe.unet.dtype) for k, v in cond.pipeline_kwargs().items()}
    one_pass = {"negative": negative_pass, "positive": positive_pass}.get(passes)
    with one_pass(pipe, text_encoders=False) if one_pass else nullcontext():
        out: Any = pipe(
            **kwargs,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(seed),
            width=size,
            height=size,
        )
        return out.images[0]


def validation_guidance(config: TrainConfig, model: "LoadedModel") -> float:
    from negalora.compare.prompt_sets import default_guidance

    return config.validation_guidance if config.validation_guidance is not None else default_guidance(model.source)


def png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def move(pipe, names, device) -> None:
    """Move the pipeline's parts ``names`` (those it has) to ``device``."""
    for name in names:
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(device)
