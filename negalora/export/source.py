"""What an export starts from: a run, one of its checkpoints (the best step, else the last), the LoRA
tensors in it and the settings it was trained with. Only safetensors is ever read; a checkpoint
that changed since it was written, or that holds NaN or inf, is refused."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from negalora.errors import NegaloraError
from negalora.hashing import sha256_file
from negalora.safetensors_check import check_safetensors
from negalora.train.config import TrainConfig


@dataclass(frozen=True)
class ExportSource:
    run_id: str
    step: int
    path: Path  # the checkpoint file (diffusers format)
    sha256: str  # of the whole checkpoint file, recorded when the trainer wrote it
    created: str  # when the checkpoint was written (ISO 8601)
    best_step: int | None
    config: TrainConfig
    images: int  # training images after pre-flight
    captions: tuple[str, ...]  # one per training image
    base_name: str
    base_location: str  # what load_model() takes: "demo", a folder, a file or a hub id
    base_hash: str  # the loaded model's identity hash (negalora's, see models/loader.py)
    picks: int = 0  # KTO: the desirable images among ``images``
    rejects: int = 0  # KTO: the undesirable ones
    pairs: int = 0  # DPO: the pairs of one prompt it learned from

    @property
    def liked(self) -> bool:
        """A LoRA of what is liked (KTO, DPO, picks), for the positive pass; else a `wrong` LoRA."""
        return self.config.liked


def find_source(store, run_id: str, step: int | None = None) -> ExportSource:
    """The run's checkpoint at ``step``; without one, the step marked best, else the last."""
    run = store.run(run_id)
    checkpoints = store.checkpoints(run_id)
    if not checkpoints:
        raise NegaloraError(f"run {run_id}: has no checkpoint to export (train it first)")
    best = run.get("best_step")
    if step is None:
        step = int(
            best if best is not None and any(c["step"] == best for c in checkpoints) else checkpoints[-1]["step"]
        )
    chosen = [c for c in checkpoints if c["step"] == step]
    if not chosen:
        kept = ", ".join(str(c["step"]) for c in checkpoints)
        raise NegaloraError(f"run {run_id}: no checkpoint at step {step} (kept: {kept})")
    row = chosen[0]
    path = Path(row["path"])
    if not path.is_file():
        raise NegaloraError(f"{path}: the checkpoint file of step {step} is gone")
    config = TrainConfig.from_dict(json.loads(run["config"]))
    dataset = _dataset(store.home.runs / run_id / "dataset.json")
    base = dataset.get("model") or _model_row(store, run.get("model_id"))
    return ExportSource(
        run_id=run_id,
        step=step,
        path=path,
        sha256=row["sha256"],
        created=row["created"],
        best_step=best,
        config=config,
        images=int(run["images"]),
        captions=tuple(i.get("caption", config.token) for i in dataset.get("images", [])),
        base_name=base.get("name", ""),
        base_location=base.get("location", ""),
        base_hash=base.get("sha256", base.get("hash", "")),
        picks=sum(i.get("label") == "pick" for i in dataset.get("images", [])),
        rejects=sum(i.get("label") == "reject" for i in dataset.get("images", [])),
        pairs=len(dataset.get("pairs", [])),
    )


def _dataset(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise NegaloraError(f"{path}: unreadable ({exc})") from exc


def _model_row(store, model_id) -> dict:
    rows = [m for m in store.models() if m["id"] == model_id]
    return rows[0] if rows else {}


def read_checkpoint(source: ExportSource) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The checkpoint's tensors and header metadata, after checking that the file is the one the
    trainer wrote and that every value is finite."""
    path = source.path
    try:
        sha = sha256_file(path)
    except OSError as exc:
        raise NegaloraError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if sha != source.sha256:
        raise NegaloraError(f"{path}: changed or damaged since training (its sha256 is not the recorded one)")
    check_safetensors(path)  # the recorded hash may itself be of a damaged file
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise NegaloraError(f"{path}: not a readable safetensors file ({exc})") from exc
    if not tensors:
        raise NegaloraError(f"{path}: holds no tensors")
    check_finite(tensors, path)
    return tensors, header


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise NegaloraError(f"{path}: tensor {key} holds NaN or inf; refusing to export it")
