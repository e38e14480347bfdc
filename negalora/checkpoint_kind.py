"""Tell what a single-file checkpoint is from its key names alone, without unpickling anything."""

from pathlib import Path

from negalora.errors import NegaloraError
from negalora.safetensors_check import check_safetensors

SDXL_BASE = "sdxl-base"
SDXL_REFINER = "sdxl-refiner"
SD1 = "sd1"
SD2 = "sd2"
LORA = "lora"
UNKNOWN = "unknown"

DESCRIPTIONS = {
    SD1: "a Stable Diffusion 1.x checkpoint",
    SD2: "a Stable Diffusion 2.x checkpoint",
    LORA: "a LoRA, not a base model (give it with --lora)",
    UNKNOWN: "not a Stable Diffusion XL checkpoint (unknown key layout)",
    SDXL_REFINER: "an SDXL refiner (give it with --refiner)",
}


def read_safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors file, after checking its header (pickles are refused unopened)."""
    return list(check_safetensors(path).tensors)


def classify_keys(keys: list[str]) -> str:
    ks = set(keys)

    def any_prefix(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in ks)

    if any("lora_down" in k or "lora_up" in k or ".lora_A." in k or ".lora.down." in k for k in ks):
        return LORA
    if any_prefix("conditioner.embedders.1.model.transformer.resblocks."):
        return SDXL_BASE
    if any_prefix("conditioner.embedders.0.model.transformer.resblocks."):
        return SDXL_REFINER
    if any_prefix("cond_stage_model.model.transformer.resblocks."):
        return SD2
    if any_prefix("cond_stage_model.transformer."):
        return SD1
    return UNKNOWN


def checkpoint_kind(path: Path) -> str:
    return classify_keys(read_safetensors_keys(path))


def require_kind(path: Path, wanted: str) -> None:
    """Raise a one-line NegaloraError unless the file at ``path`` is of kind ``wanted``."""
    kind = checkpoint_kind(path)
    if kind != wanted:
        what = DESCRIPTIONS.get(kind, kind)
        if wanted == SDXL_REFINER and kind == SDXL_BASE:
            what = "an SDXL base model, not a refiner"
        raise NegaloraError(f"{path}: {what}; negalora needs {'an SDXL refiner' if wanted == SDXL_REFINER else 'SDXL'}")
