"""Samplers by their A1111 names, built from the model's own scheduler config.

The names cost nothing to import (the CLI's --help and the window list them); diffusers is
imported only when a scheduler is made.
"""

from negalora.errors import NegaloraError

# name -> (diffusers class name, config overrides)
SCHEDULERS = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}
DEFAULT_SCHEDULER = "Euler"


def canonical_name(name: str) -> str:
    """Accept names case-insensitively and with '_' or '-' for spaces (``euler_a``, ``dpm++-2m-karras``)."""
    wanted = name.strip().lower().replace("_", " ").replace("-", " ")
    for known in SCHEDULERS:
        if known.lower() == wanted:
            return known
    raise NegaloraError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")


def make_scheduler(name: str, base_config: dict):
    import diffusers

    cls_name, overrides = SCHEDULERS[canonical_name(name)]
    return getattr(diffusers, cls_name).from_config(base_config, **overrides)
