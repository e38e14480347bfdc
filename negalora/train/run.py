"""A training run as its steps and checkpoints see it, its result, and its loss log."""

import resource
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from negalora.errors import NegaloraError
from negalora.store import Store
from negalora.train.cache import Sample
from negalora.train.config import TrainConfig
from negalora.train.schedule import Schedule


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


@dataclass
class TrainingRun:
    """One run as its steps and checkpoints see it; ``Trainer._setup`` fills in the training parts."""

    id: str
    config: TrainConfig
    dir: Path
    start_step: int
    mixed: str  # the precision: no | bf16 | fp16
    weight_dtype: torch.dtype
    unet: Any  # the shared pipeline's UNet, accelerate's wrapper once prepared
    encoders: list  # the text encoders, when they learn too
    frozen: tuple[str, ...]  # the pipeline's parts that do not learn: off the GPU while the LoRA trains
    accelerator: Any = None
    optimizer: Any = None
    lr_schedule: Any = None
    noise_scheduler: Any = None
    samples: list[list[Sample]] = field(default_factory=list)  # each training image's variants (its mirror)
    class_samples: list[list[Sample]] = field(default_factory=list)  # prior preservation's class images
    text: dict = field(default_factory=dict)  # caption -> (embeds, pooled)
    params: list = field(default_factory=list)  # everything the optimizer trains
    text_params: list = field(default_factory=list)  # the text encoders' share of them
    schedules: tuple[Schedule, ...] = ()  # stream 0 the samples (dpo: the pairs), 1 the class samples
    pairs: list[tuple[int, int]] = field(default_factory=list)  # dpo: (preferred, rejected) sample indices
    desirable: list[bool] = field(default_factory=list)  # kto: each sample a pick (True) or a reject


class LossLog:
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


def shapes(samples: list[list[Sample]]) -> list[tuple[int, ...]]:
    """Each sample's bucket, as the schedule knows it: the shape of its latents."""
    return [tuple(variants[0].latents.shape) for variants in samples]
