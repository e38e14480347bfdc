"""Test-prompt sets: fixed prompts and seeds a LoRA is judged on, kept in the store.

Each kind of model gets its own default set, rendered after every training run: SDXL prompts for an
SDXL, the demo world's captions (at the CFG its efficacy was measured at) for the demo model, which
cannot draw a portrait or a cat.
"""

import json
from pathlib import Path

from negalora.api import CompareRequest
from negalora.errors import NegaloraError
from negalora.lora_passes import DEFAULT, POSITIVE
from negalora.store import Store

DEFAULT_SET = "default"
DEFAULT_PROMPTS = (
    "a portrait photo of a woman in a garden",
    "a cat sitting on a windowsill, morning light",
    "a city street at night in the rain",
    "a bowl of fruit on a wooden table",
)
DEFAULT_SEEDS = (1, 2)
DEFAULT_GUIDANCE = 7.0

DEMO_SET = "default-demo"
DEMO_PROMPTS = (
    "a red circle on a blue background",
    "a yellow square on a black background",
    "a white triangle on a green background",
    "a blue square on a white background",
)
DEMO_GUIDANCE = 3.0  # the CFG of docs/efficacy.md
DEMO_STEPS = 20


def default_set_name(model_source: str) -> str:
    """The default set for a model of this source (``demo``, ``folder``, ``file``, ``hub``)."""
    return DEMO_SET if model_source == "demo" else DEFAULT_SET


def default_guidance(model_source: str) -> float:
    """The CFG that comparisons of this kind of model use by default (and validation images too)."""
    return DEMO_GUIDANCE if model_source == "demo" else DEFAULT_GUIDANCE


def ensure_default_set(store: Store, model_source: str = "") -> dict:
    """The model's default set; created on first use, then the artist's to edit."""
    name = default_set_name(model_source)
    try:
        return store.prompt_set(name)
    except NegaloraError:  # not there yet
        if name == DEMO_SET:
            store.save_prompt_set(name, list(DEMO_PROMPTS), list(DEFAULT_SEEDS), {"guidance": DEMO_GUIDANCE})
        else:
            store.save_prompt_set(name, list(DEFAULT_PROMPTS), list(DEFAULT_SEEDS))
        return store.prompt_set(name)


def liked_lora(store: Store, lora: str) -> bool:
    """The LoRA (a run id or a file) is one of what is liked (KTO, DPO, picks), not a `wrong` LoRA: the
    run's settings say, or a file's negalora metadata (a file without it counts as a `wrong` LoRA)."""
    from negalora.train.config import TrainConfig

    if not lora:
        return False
    path = Path(lora).expanduser()
    if path.suffix or path.exists():
        from negalora.safetensors_check import check_safetensors

        try:  # a run's own checkpoint file: the run says
            run_id = path.resolve().relative_to(store.home.runs.resolve()).parts[0]
            return TrainConfig.from_dict(json.loads(store.run(run_id)["config"])).liked
        except (ValueError, IndexError, NegaloraError):
            pass

        try:
            learned = check_safetensors(path).metadata.get("negalora.learned_from", "rejects")
        except (NegaloraError, OSError):
            return False  # the comparison itself names what is wrong with the file
        return learned != "rejects"
    try:
        return TrainConfig.from_dict(json.loads(store.run(lora)["config"])).liked
    except NegaloraError:
        return False


def measured_passes(store: Store, lora: str) -> str:
    """The passes a LoRA measured best on: the positive pass for a LoRA of what is liked
    (docs/efficacy_preference.md), the negative pass for a `wrong` LoRA (docs/efficacy.md)."""
    return POSITIVE if liked_lora(store, lora) else DEFAULT


def after_training_request(store: Store, run_id: str, **settings) -> CompareRequest:
    """The comparison rendered after every training run: the run's model's default test set (at its
    CFG, where the set has one), three ways, on the run's newest checkpoint. A run of what is liked is
    shown on the positive pass, where it measured best, whatever passes the settings name for `wrong` LoRAs
    (and a `wrong` LoRA never there)."""
    model = store.run_model(run_id)
    prompt_set = ensure_default_set(store, model["source"] if model else "")
    checkpoints = store.checkpoints(run_id)
    if not checkpoints:
        raise NegaloraError(f"run {run_id}: has no checkpoints yet")
    if liked_lora(store, run_id):
        settings["lora_passes"] = POSITIVE
    elif settings.get("lora_passes") == POSITIVE:  # left there by a liked run: a `wrong` LoRA's is its own
        settings["lora_passes"] = DEFAULT
    return CompareRequest(prompt_set=prompt_set["name"], lora=run_id, step=checkpoints[-1]["step"], **settings)
