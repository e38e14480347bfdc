"""The parts of a run around its steps: the optimizer, and the shared pipeline put back as it was."""

import torch

from negalora.errors import NegaloraError
from negalora.models.loader import LoadedModel
from negalora.train.checkpoints import TEXT_ENCODERS, move
from negalora.train.config import TrainConfig
from negalora.train.run import TrainingRun


def make_optimizer(config: TrainConfig, params, device: torch.device):
    if config.optimizer == "adamw8bit":
        if device.type != "cuda":
            raise NegaloraError("8-bit AdamW needs a CUDA GPU; use --optimizer adamw")
        try:
            import bitsandbytes as bnb  # pyright: ignore[reportMissingImports] (the optional [cuda] extra)
        except ImportError as exc:
            raise NegaloraError("8-bit AdamW needs bitsandbytes: pip install -e '.[cuda]'") from exc
        return bnb.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
    # fused on CUDA; elsewhere the multi-tensor kernels (a LoRA is many small tensors, and the one-by-one
    # loop that is torch's default on the CPU costs more Python than arithmetic)
    cuda = device.type == "cuda"
    return torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, fused=cuda or None, foreach=None if cuda else True
    )


def restore_pipeline(model: LoadedModel, run: TrainingRun) -> None:
    """The shared pipeline as it was before the run: no LoRA, its own dtypes and devices."""
    pipe, placement = model.pipe, model.placement
    raw = run.accelerator.unwrap_model(run.unet, keep_fp32_wrapper=False) if run.accelerator else run.unet
    remove_lora(raw)
    raw.to(dtype=placement.dtype)
    for encoder in run.encoders:
        remove_lora(encoder)
        encoder.to(dtype=placement.dtype)
    move(pipe, ("vae", *TEXT_ENCODERS), placement.device)
    if placement.vae_dtype != pipe.vae.dtype:
        pipe.vae.to(dtype=placement.vae_dtype)


def remove_lora(model) -> None:
    """Leave the shared pipeline as it was: no adapter, nothing trainable (a diffusers UNet or a
    transformers text encoder: their peft methods are named differently)."""
    remove = getattr(model, "delete_adapters", None) or getattr(model, "delete_adapter", None)
    try:
        if remove is not None:
            remove(["default"])
    except (ValueError, KeyError, TypeError):
        pass
    model.requires_grad_(False)
    model.eval()
    if hasattr(model, "disable_gradient_checkpointing") and getattr(model, "is_gradient_checkpointing", False):
        model.disable_gradient_checkpointing()
