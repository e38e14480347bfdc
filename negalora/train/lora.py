"""The LoRA itself: adding it to the UNet with peft, and writing it in diffusers' format."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from negalora import faults
from negalora.train.config import TEXT_ATTENTION, TrainConfig

ADAPTER = "default"


def lora_config(config: TrainConfig) -> LoraConfig:
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.lora_alpha,  # pyright: ignore[reportArgumentType] (peft types it int; a float alpha works, kohya writes one)
        init_lora_weights="gaussian",  # as diffusers' SDXL DreamBooth script: B = 0, so step 0 is the base model
        target_modules=list(config.target_modules),
    )


def text_lora_config(config: TrainConfig) -> LoraConfig:
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.lora_alpha,  # pyright: ignore[reportArgumentType] (as above)
        init_lora_weights="gaussian",
        target_modules=list(TEXT_ATTENTION),
    )


def add_lora(model, config: TrainConfig, *, text: bool = False) -> list[torch.nn.Parameter]:
    """Freeze a UNet (or, with ``text``, a CLIP text encoder), add the adapter, keep the LoRA weights in
    fp32; returns the trainable parameters."""
    model.requires_grad_(False)
    model.add_adapter(text_lora_config(config) if text else lora_config(config), adapter_name=ADAPTER)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


@contextmanager
def lora_off(model):
    """The model as it was before its LoRA: the frozen reference of the preference objectives."""
    model.disable_adapters()
    try:
        yield model
    finally:
        model.enable_adapters()


def peft_state(unet) -> dict[str, torch.Tensor]:
    """peft-style keys (``…to_q.lora_A.weight``), detached on the CPU in fp32."""
    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def load_peft_state(unet, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"LoRA state has keys the model does not: {unexpected[:3]}")


def save_diffusers_lora(unet, path: Path, config: TrainConfig, text_encoders=()) -> Path:
    """Write ``path`` as diffusers' ``pytorch_lora_weights.safetensors`` (with ``lora_adapter_metadata``),
    atomically: the library writes into a temp folder beside it, then the file is moved into place."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lora-", dir=path.parent))
    try:
        extra = {}
        if text_encoders:
            te1, te2 = text_encoders
            extra = {
                "text_encoder_lora_layers": convert_state_dict_to_diffusers(peft_state(te1)),
                "text_encoder_2_lora_layers": convert_state_dict_to_diffusers(peft_state(te2)),
                "text_encoder_lora_adapter_metadata": text_lora_config(config).to_dict(),
                "text_encoder_2_lora_adapter_metadata": text_lora_config(config).to_dict(),
            }
        faults.inject("checkpoint_write", path)
        StableDiffusionXLPipeline.save_lora_weights(
            str(tmp),
            unet_lora_layers=convert_state_dict_to_diffusers(peft_state(unet)),
            unet_lora_adapter_metadata=lora_config(config).to_dict(),
            weight_name="lora.safetensors",
            **extra,
        )
        written = tmp / "lora.safetensors"
        with open(written, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(written, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
