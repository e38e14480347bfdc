"""Training on one process or on several (`accelerate launch`, torchrun: one process per GPU): the
accelerator, its precision, and the collectives the processes decide together with.

``state`` below is None when the process trains alone, else accelerate's shared state (a
``PartialState`` or the ``Accelerator``): both know the process count, rank and device.
"""

import os
import typing
from collections.abc import Callable
from typing import TypeVar

import torch

from negalora.errors import NegaloraError

T = TypeVar("T")

WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_accelerator(mixed: str, device: torch.device):
    """accelerate keeps one state per process; a later run with another precision resets it (the
    distributed part of the state, set by `accelerate launch`, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed, cpu=device.type == "cpu")


def distributed_state(model):
    """Under `accelerate launch` or torchrun (WORLD_SIZE > 1) the processes' shared state; None when
    this process trains alone, so a single run never starts a process group (``model``: the loaded
    model, whose placement says whether the processes are on the CPU; not read when alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from datetime import timedelta

    from accelerate import PartialState

    # The others wait while the main process caches latents or renders validation images: give them time.
    return PartialState(cpu=model.placement.device.type == "cpu", timeout=timedelta(hours=2))


def mixed_precision(setting: str, device: torch.device) -> str:
    """The run's ``mixed_precision`` setting made concrete: auto is bf16 (fp16 without it) on CUDA, else none."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def weight_dtype(mixed: str) -> torch.dtype:
    """The dtype the trained modules are kept in under ``mixed`` precision."""
    return WEIGHT_DTYPES.get(mixed, torch.float32)


def is_main(state) -> bool:
    return state is None or state.is_main_process


def any_process(flag: bool, state) -> bool:
    """True on every process when ``flag`` is set on any: they skip, stop or go on together. A
    collective when there are several: every process must call it, in the same order."""
    if state is None or state.num_processes <= 1:
        return flag
    from accelerate.utils import reduce

    flags = torch.tensor([float(flag)], device=state.device)
    total: typing.Any = reduce(flags, reduction="sum")  # a tensor in, a tensor out
    return bool(total.item() > 0)


def main_first(work: Callable[[], T], state) -> T:
    """Run ``work`` on the main process first (it fills the caches), then on the others. A failure
    on the main process stops them all instead of leaving them at a barrier."""
    if state is None:
        return work()
    main = is_main(state)
    result, error = None, None
    if main:
        try:
            result = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others are told
            error = exc
    if any_process(error is not None, state):
        if error is not None:
            raise error
        raise NegaloraError("the main process stopped while preparing the training images")
    return typing.cast(T, result) if main else work()  # main: set above, or raised
