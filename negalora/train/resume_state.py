"""The resume state of a run, stored without pickles: optimizer tensors in a safetensors file and
everything else (step, the optimizer's param groups) as JSON in its header.

All other randomness (batch order, noise, timesteps) is a pure function of the run's seed and the
step, so nothing else needs saving for a resumed run to end with the same weights.
"""

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from negalora import faults
from negalora.atomic import FILE_MODE
from negalora.errors import NegaloraError
from negalora.safetensors_check import check_safetensors

FORMAT = "negalora-resume-1"


def save_resume_state(
    path: Path,
    *,
    step: int,
    optimizer: torch.optim.Optimizer,
    lora: dict[str, dict[str, torch.Tensor]] | None = None,
    scaler: dict | None = None,
    extra: dict | None = None,
) -> None:
    """``lora`` maps a part ("unet", "text_encoder", "text_encoder_2") to its peft-style LoRA tensors,
    kept exactly as trained so a resume needs no format conversion. ``scaler`` is an fp16 GradScaler's
    state (plain numbers: the loss scale and its growth tracker)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for part, values in (lora or {}).items():
        for key, value in values.items():
            tensors[f"lora.{part}.{key}"] = value.detach().cpu().contiguous()
    scalars: dict[str, dict] = {}
    for idx, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    meta = {
        "format": FORMAT,
        "step": step,
        "param_groups": state["param_groups"],
        "scalars": scalars,
        "scaler": scaler,
        "extra": extra or {},
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # .tmp: reconcile sweeps it
    if hasattr(os, "fchmod"):
        os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        faults.inject("resume_state_write", path)
        save_file(tensors, tmp, metadata={"negalora": json.dumps(meta)})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_resume_state(path: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer from ``path``; returns the saved metadata (step, scaler, extra, lora tensors).
    A damaged or foreign file is refused with a NegaloraError naming it."""
    path = Path(path)
    header = check_safetensors(path)
    meta = _meta(path, header.metadata)
    tensors = _tensors(path, header, ("lora", "state"))
    lora: dict[str, dict[str, torch.Tensor]] = {}
    state: dict[int, dict] = {}
    try:
        for (kind, first, rest), value in tensors.items():
            if kind == "lora":
                lora.setdefault(first, {})[rest] = value
            else:
                state.setdefault(int(first), {})[rest] = value
        for idx, values in meta["scalars"].items():
            state.setdefault(int(idx), {}).update(values)
    except (ValueError, TypeError, AttributeError) as exc:
        raise NegaloraError(f"{path}: not a negalora resume state ({exc})") from exc
    device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    state = {
        i: {k: (v.to(device) if torch.is_tensor(v) and k != "step" else v) for k, v in s.items()}
        for i, s in state.items()
    }
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise NegaloraError(f"{path}: does not fit this run's optimizer ({_first_line(exc)})") from exc
    meta["lora"] = lora
    return meta


def read_resume_lora(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Only the LoRA tensors of a resume state, by part."""
    path = Path(path)
    lora: dict[str, dict[str, torch.Tensor]] = {}
    for (_, part, rest), value in _tensors(path, check_safetensors(path), ("lora",)).items():
        lora.setdefault(part, {})[rest] = value
    return lora


def _meta(path: Path, metadata: dict[str, str]) -> dict:
    try:
        meta = json.loads(metadata["negalora"])
    except KeyError:
        raise NegaloraError(f"{path}: not a negalora resume state (no negalora metadata)") from None
    except (ValueError, RecursionError):
        raise NegaloraError(f"{path}: damaged resume state (its metadata is not JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise NegaloraError(f"{path}: not a negalora resume state")
    if type(meta.get("step")) is not int or not isinstance(meta.get("scalars"), dict):
        raise NegaloraError(f"{path}: damaged resume state (no step or optimizer scalars)")
    if not isinstance(meta.get("param_groups"), list):
        raise NegaloraError(f"{path}: damaged resume state (no optimizer param groups)")
    return meta


def _tensors(path: Path, header, kinds: tuple[str, ...]) -> dict[tuple[str, str, str], torch.Tensor]:
    """The tensors named ``<kind>.<first>.<rest>`` for the wanted kinds, read after the header was checked."""
    names = {}
    for key in header.tensors:
        parts = tuple(key.split(".", 2))
        if len(parts) != 3 or parts[0] not in ("lora", "state"):
            raise NegaloraError(f"{path}: not a negalora resume state (tensor {key[:80]!r})")
        if parts[0] in kinds:
            names[parts] = key
    try:
        with safe_open(str(path), "pt") as f:
            return {parts: f.get_tensor(key) for parts, key in names.items()}
    except (SafetensorError, OSError) as exc:
        raise NegaloraError(f"{path}: unreadable resume state ({_first_line(exc)})") from exc


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
