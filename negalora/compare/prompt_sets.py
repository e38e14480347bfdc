"""Test-prompt sets: fixed prompts and seeds a LoRA is judged on, kept in the store."""

from negalora.errors import NegaloraError
from negalora.store import Store

DEFAULT_SET = "default"
DEFAULT_PROMPTS = (
    "a portrait photo of a woman in a garden",
    "a cat sitting on a windowsill, morning light",
    "a city street at night in the rain",
    "a bowl of fruit on a wooden table",
)
DEFAULT_SEEDS = (1, 2)


def ensure_default_set(store: Store) -> dict:
    """The set re-rendered after every training run; created on first use, then the artist's to edit."""
    try:
        return store.prompt_set(DEFAULT_SET)
    except NegaloraError:  # not there yet
        store.save_prompt_set(DEFAULT_SET, list(DEFAULT_PROMPTS), list(DEFAULT_SEEDS))
        return store.prompt_set(DEFAULT_SET)
