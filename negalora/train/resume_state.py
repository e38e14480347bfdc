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
from safetensors import safe_open
from safetensors.torch import save_file

from negalora.atomic import FILE_MODE

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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"negalora": json.dumps(meta)})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_resume_state(path: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer from ``path``; returns the saved metadata (step, scaler, extra, lora tensors)."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["negalora"])
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a negalora resume state")
        state: dict[int, dict] = {}
        lora: dict[str, dict[str, torch.Tensor]] = {}
        for key in f.keys():
            kind, first, rest = key.split(".", 2)
            if kind == "lora":
                lora.setdefault(first, {})[rest] = f.get_tensor(key)
            else:
                state.setdefault(int(first), {})[rest] = f.get_tensor(key)
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    state = {
        i: {k: (v.to(device) if torch.is_tensor(v) and k != "step" else v) for k, v in s.items()}
        for i, s in state.items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    meta["lora"] = lora
    return meta


def read_resume_lora(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Only the LoRA tensors of a resume state, by part."""
    lora: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            if key.startswith("lora."):
                _, part, rest = key.split(".", 2)
                lora.setdefault(part, {})[rest] = f.get_tensor(key)
    return lora
