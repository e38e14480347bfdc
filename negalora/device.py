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


# Auto batch size. A batch helps where a pipeline call's fixed cost (Python, kernel launches, the
# scheduler) is large next to the UNet's work: small images, and GPUs that a single image does not
# fill. So the batch grows until the latent cells of the whole batch reach a device's share of work
# (4 SDXL images at 1024² on a GPU; on a CPU, whose cores a 64×64 latent already keeps busy, only
# smaller images batch), and never past what fits in the memory left.
# tiny images on 2 CPU cores: a batch of 32 gives 5.8x the images/s of one by one, 64 gives 6.9x with
# its first image twice as late
AUTO_MAX = 32
WORK_CELLS = {"cuda": 4 * 128 * 128, "mps": 2 * 128 * 128, "cpu": 64 * 64}
# activation bytes per latent cell per UNet base channel (CFG doubles the batch inside the UNet):
# about 1.5 GB for one SDXL image at 1024² in fp16 with SDPA; estimated, with room to spare
ACTIVATION_FACTOR = 160


def free_memory(device: torch.device) -> int | None:
    """Bytes free for a batch on ``device`` (None when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def auto_batch_size(placement: Placement, width: int, height: int, unet_channels: int, free: int | None) -> int:
    """Images per pipeline call for ``batch size: auto``, with ``free`` bytes left on the device
    (``free_memory``); 1 wherever a batch would not fit."""
    cells = (width // 8) * (height // 8)
    by_work = max(1, WORK_CELLS.get(placement.device.type, WORK_CELLS["cpu"]) // max(cells, 1))
    if free is None:
        return 1
    per_image = cells * unet_channels * placement.dtype.itemsize * ACTIVATION_FACTOR
    vae = width * height * 128 * placement.vae_dtype.itemsize * 6  # one decode at a time (VAE slicing)
    budget = int(free * 0.7) - vae
    by_memory = budget // per_image if per_image else AUTO_MAX
    return int(max(1, min(AUTO_MAX, by_work, by_memory)))
