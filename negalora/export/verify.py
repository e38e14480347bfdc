"""The check an export passes before it is put in place: diffusers loads the written file, every
module in it becomes a LoRA module on the base model with the same weights and scale as the
checkpoint's, and a fixed-seed image matches the app's own render of the checkpoint.

The check loads the file under its own adapter name beside the app's LoRA, renders with only that
adapter active through a fresh Generator, and takes every LoRA off the pipeline afterwards, so the
app's next job starts clean.
"""

import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from negalora.cancel import CancelToken
from negalora.errors import NegaloraError
from negalora.export.source import ExportSource
from negalora.generate import LORA_ADAPTER, GenerateRequest, Generator
from negalora.lora_passes import BOTH

CHECK_ADAPTER = "negalora_export_check"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
MAX_PIXEL_DIFF = 2  # of 255
MAX_WEIGHT_DIFF = 1e-6
STEPS = 4
MAX_SIZE = 512  # small is enough to compare; keeps the check cheap on a real SDXL


@dataclass(frozen=True)
class Verification:
    verified: bool
    modules_in_file: int = 0
    modules_loaded: int = 0
    max_weight_diff: float = 0.0
    max_pixel_diff: int = 0  # of 255
    tolerance: int = MAX_PIXEL_DIFF
    prompt: str = ""
    negative: str = ""
    seed: int = 0
    steps: int = 0
    size: int = 0
    scale: float = 1.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _adapter_modules(pipe, adapter: str) -> dict[str, dict[str, torch.nn.Module]]:
    """component -> {module name: module} for the modules that carry ``adapter``."""
    found = {}
    for component in COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        found[component] = {
            name: m
            for name, m in model.named_modules()
            if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and adapter in m.lora_A
        }
    return found


def _compare_modules(pipe, path: Path, modules_in_file: int) -> tuple[int, float]:
    """Loaded modules and the largest weight/scale difference between the app's adapter and the file's."""
    app = _adapter_modules(pipe, LORA_ADAPTER)
    check = _adapter_modules(pipe, CHECK_ADAPTER)
    loaded = sum(len(v) for v in check.values())
    for component in COMPONENTS:
        a, b = set(app.get(component, {})), set(check.get(component, {}))
        if a != b:
            missing = sorted(a - b)[:3] or sorted(b - a)[:3]
            raise NegaloraError(
                f"{path}: {component} modules differ from the checkpoint's after reloading ({', '.join(missing)})"
            )
    if loaded != modules_in_file:
        raise NegaloraError(
            f"{path}: diffusers made {loaded} LoRA modules from the {modules_in_file} in the file (unmatched keys)"
        )
    worst = 0.0
    for mods in check.values():
        for found in mods.values():
            module: Any = found  # a peft LoRA layer (torch types it Module)
            for part in ("lora_A", "lora_B"):
                ref = getattr(module, part)[LORA_ADAPTER].weight.detach()
                got = getattr(module, part)[CHECK_ADAPTER].weight.detach()
                worst = max(worst, float((ref.float() - got.float()).abs().max()))
            # alpha / rank, not ``scaling``: set_adapters() multiplies the strength into that
            ref_scale = module.lora_alpha[LORA_ADAPTER] / module.r[LORA_ADAPTER]
            worst = max(worst, float(abs(ref_scale - module.lora_alpha[CHECK_ADAPTER] / module.r[CHECK_ADAPTER])))
    if worst > MAX_WEIGHT_DIFF:
        raise NegaloraError(f"{path}: reloaded LoRA weights or scales differ from the checkpoint's by {worst:.3g}")
    return loaded, worst


def verify_export(
    generator: Generator,
    source: ExportSource,
    path: Path,
    modules_in_file: int,
    *,
    scale: float = 1.0,
    cancel: CancelToken | None = None,
) -> Verification:
    """Reload ``path`` (the written temp file) and compare it with the checkpoint; raises NegaloraError."""
    started = time.monotonic()
    model = generator.model
    if model.sha256 != source.base_hash:
        raise NegaloraError(
            f"run {source.run_id} was trained on {source.base_name} ({source.base_hash[:10]}), but the loaded model "
            f"is {model.name} ({model.sha256[:10]}); load the run's model to verify the export"
        )
    pipe = model.pipe
    size = min(model.native_size, MAX_SIZE)
    prompts = source.config.validation_prompts or ("a photo",)
    request = GenerateRequest(
        prompts=(prompts[0],),
        negative="" if source.liked else source.config.token,  # a liked LoRA is used without the token
        seed=source.config.validation_seed,
        steps=STEPS,
        guidance=7.0,
        width=size,
        height=size,
        lora=str(source.path),
        lora_scale=scale,
        lora_passes=BOTH,  # as diffusers' load_lora_weights applies it, which is what is checked here
        use_refiner=False,  # the LoRA is on the base model; the refiner would only add time
    )
    recipe = generator.plan(request)[0]
    try:
        reference = np.asarray(generator.render(recipe, cancel=cancel), dtype=np.int16)  # the app's own path
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Already found a `peft_config`")  # two adapters on purpose
                pipe.load_lora_weights(str(path), adapter_name=CHECK_ADAPTER)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise NegaloraError(f"{path}: diffusers cannot load it ({str(exc).splitlines()[0][:200]})") from exc
        loaded, weight_diff = _compare_modules(pipe, path, modules_in_file)
        pipe.set_adapters([CHECK_ADAPTER], adapter_weights=[scale])
        plain = replace(recipe, lora="", lora_path="", lora_hash="")
        exported = np.asarray(Generator(model).render(plain, cancel=cancel), dtype=np.int16)
    finally:
        _take_off_loras(generator)
    pixel_diff = int(np.abs(exported - reference).max())
    if pixel_diff > MAX_PIXEL_DIFF:
        raise NegaloraError(
            f"{path}: renders {pixel_diff}/255 away from the checkpoint at seed {recipe.seed} "
            f"(allowed {MAX_PIXEL_DIFF}/255)"
        )
    return Verification(
        verified=True,
        modules_in_file=modules_in_file,
        modules_loaded=loaded,
        max_weight_diff=weight_diff,
        max_pixel_diff=pixel_diff,
        prompt=recipe.prompt,
        negative=recipe.negative,
        seed=recipe.seed,
        steps=recipe.steps,
        size=size,
        scale=scale,
        seconds=round(time.monotonic() - started, 3),
    )


def _take_off_loras(generator: Generator) -> None:
    generator.release_lora()
    pipe = generator.model.pipe
    if any(getattr(getattr(pipe, c, None), "peft_config", None) for c in COMPONENTS):
        pipe.unload_lora_weights()
