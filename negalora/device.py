"""Where the models run, chosen in one place: CUDA, else MPS, else CPU.

On a GPU the UNet and text encoders use bf16 where supported, else fp16. The stock SDXL VAE
overflows in fp16 (NaN, black images), so with fp16 it is kept in fp32 unless the user supplies
an fp16-fix VAE. On the CPU everything is fp32.
"""

import os
from dataclasses import dataclass

import torch

from negalora.errors import NegaloraError


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype

    @property
    def label(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name = f"{name} ({torch.cuda.get_device_name(self.device)})"
        return f"{name} {str(self.dtype).removeprefix('torch.')}"


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return kind == "cpu"


def choose_placement(prefer: str | None = None, *, fp16_fix_vae: bool = False) -> Placement:
    """Pick the device and dtypes. ``prefer`` (or $NEGALORA_DEVICE) forces cpu, cuda or mps."""
    prefer = prefer or os.environ.get("NEGALORA_DEVICE") or None
    if prefer:
        kind = prefer.split(":")[0]
        if kind not in ("cpu", "cuda", "mps"):
            raise NegaloraError(f"device {prefer!r}: must be cpu, cuda or mps")
        if not _available(kind):
            raise NegaloraError(f"device {prefer!r}: not available on this machine")
        device = torch.device(prefer)
    else:
        device = torch.device("cuda" if _available("cuda") else "mps" if _available("mps") else "cpu")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        # `accelerate launch` / torchrun: each process trains on its own GPU
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))

    if device.type == "cpu":
        return Placement(device, torch.float32, torch.float32)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return Placement(device, torch.bfloat16, torch.bfloat16)
    return Placement(device, torch.float16, torch.float16 if fp16_fix_vae else torch.float32)
