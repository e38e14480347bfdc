"""diffusers/peft LoRA key names to kohya's, as A1111, ComfyUI and diffusers read them for SDXL.

A module's kohya name is a prefix (``lora_unet_``, ``lora_te1_`` for CLIP-L, ``lora_te2_`` for
OpenCLIP bigG) plus its diffusers/transformers module path with ``.`` replaced by ``_``; each module
has ``.lora_down.weight``, ``.lora_up.weight`` and a scalar ``.alpha`` (the scale is alpha / rank).
diffusers' own ``convert_state_dict_to_kohya`` writes alpha = rank whatever the run used; this
writes the real alpha.
"""

import json

import torch

from negalora.errors import NegaloraError

PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}

# Suffix -> which half of the LoRA: peft's, diffusers' UNet, diffusers' text encoders, kohya's.
_PARTS = (
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
)
# transformers 5 builds CLIPTextModel without its ``text_model`` level; kohya's names always have it.
_CLIP_ROOTS = ("encoder.", "embeddings.", "final_layer_norm.")


def split_key(key: str) -> tuple[str, str, str]:
    """``unet.down_blocks.1…to_k.lora.down.weight`` -> ("unet", "down_blocks.1…to_k", "down")."""
    component, _, rest = key.partition(".")
    if component not in PREFIXES:
        raise NegaloraError(f"LoRA key {key!r}: not a UNet or text-encoder key (unet., text_encoder., text_encoder_2.)")
    for suffix, part in _PARTS:
        if rest.endswith(suffix):
            return component, rest[: -len(suffix)], part
    raise NegaloraError(f"LoRA key {key!r}: not a LoRA down/up weight")


def kohya_module_name(component: str, module: str) -> str:
    if component != "unet" and not module.startswith("text_model."):
        if not module.startswith(_CLIP_ROOTS):
            raise NegaloraError(f"text-encoder module {module!r}: not a CLIP text-model module")
        module = "text_model." + module
    return PREFIXES[component] + module.replace(".", "_")


def lora_modules(tensors: dict[str, torch.Tensor]) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """(component, module) -> {"down": A, "up": B}, checking each module is a whole, consistent pair."""
    modules: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        component, module, part = split_key(key)
        pair = modules.setdefault((component, module), {})
        if part in pair:
            raise NegaloraError(f"LoRA key {key!r}: module {module} has two {part} weights")
        pair[part] = value
    for (component, module), pair in modules.items():
        if set(pair) != {"down", "up"}:
            raise NegaloraError(f"{component}.{module}: has a LoRA {next(iter(pair))} weight but no other half")
        down, up = pair["down"], pair["up"]
        if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
            raise NegaloraError(
                f"{component}.{module}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a LoRA pair"
            )
    return modules


def adapter_alphas(header: dict[str, str], components, fallback: float) -> dict[str, float]:
    """Each component's LoRA alpha, from the checkpoint's ``lora_adapter_metadata`` (what diffusers
    applies when it loads the checkpoint), else ``fallback`` (the run's setting)."""
    try:
        meta = json.loads(header.get("lora_adapter_metadata") or "{}")
    except ValueError as exc:
        raise NegaloraError(f"unreadable lora_adapter_metadata in the checkpoint header ({exc})") from exc
    alphas = {}
    for component in components:
        if meta.get(f"{component}.alpha_pattern") or meta.get(f"{component}.rank_pattern"):
            # kohya files carry one alpha per module, but a pattern would need peft's matching rules here
            raise NegaloraError(f"{component}: per-module alpha or rank patterns cannot be exported")
        alpha = meta.get(f"{component}.lora_alpha")
        alphas[component] = float(alpha) if alpha is not None else float(fallback)
    return alphas


def to_kohya(tensors: dict[str, torch.Tensor], alphas: dict[str, float]) -> dict[str, torch.Tensor]:
    """kohya-format tensors: down, up and the real alpha for every module."""
    out: dict[str, torch.Tensor] = {}
    for (component, module), pair in lora_modules(tensors).items():
        name = kohya_module_name(component, module)
        if f"{name}.alpha" in out:
            raise NegaloraError(f"{component}.{module}: two modules map to the kohya name {name}")
        out[f"{name}.lora_down.weight"] = pair["down"].contiguous()
        out[f"{name}.lora_up.weight"] = pair["up"].contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alphas[component]), dtype=torch.float32)
    return out
