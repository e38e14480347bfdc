"""Samplers by their A1111 names, built from the model's own scheduler config.

The names live in ``negalora.api`` (torch-free: the CLI's --help and the window list them);
diffusers is imported only when a scheduler is made.
"""

from negalora.api import DEFAULT_SCHEDULER, SCHEDULERS, canonical_name

__all__ = ["DEFAULT_SCHEDULER", "SCHEDULERS", "canonical_name", "make_scheduler"]


def make_scheduler(name: str, base_config: dict):
    import diffusers

    cls_name, overrides = SCHEDULERS[canonical_name(name)]
    return getattr(diffusers, cls_name).from_config(base_config, **overrides)
