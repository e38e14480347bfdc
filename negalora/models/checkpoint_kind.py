"""Tell what a single-file checkpoint is from its key names alone, without unpickling anything."""

import json
import struct
from pathlib import Path

from negalora.errors import NegaloraError

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}

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
    """The tensor names in a .safetensors file, after checking the file is complete."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        # Never unpickle: a pickle can run code on load.
        raise NegaloraError(
            f"{path}: {path.suffix} files are Python pickles, which can run code when loaded; "
            "negalora only loads .safetensors"
        )
    if path.suffix.lower() != ".safetensors":
        raise NegaloraError(f"{path}: not a .safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise NegaloraError(f"{path}: truncated .safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                raise NegaloraError(f"{path}: truncated or corrupt .safetensors file (header size {n})")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise NegaloraError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise NegaloraError(f"{path}: corrupt .safetensors header") from exc
    if not isinstance(header, dict):
        raise NegaloraError(f"{path}: corrupt .safetensors header")
    end = 0
    keys = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise NegaloraError(f"{path}: corrupt .safetensors header (tensor {key!r})") from exc
        keys.append(key)
    if 8 + n + end > size:
        raise NegaloraError(f"{path}: truncated .safetensors file ({size} bytes, needs {8 + n + end})")
    return keys


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
