"""Fault injection for the reliability tests, in the spirit of SQLite's test hooks.

``NEGALORA_FAULTS`` names points and what happens there, e.g. ``image_write=enospc`` or
``checkpoint_write=enospc@2,generate_step=oom``: ``@N`` fails only the N-th time the point is
reached (counted per process). Unset, ``inject`` costs one dict lookup. The environment variable
reaches the worker and CLI processes that the tests start.

Points: ``image_write``, ``checkpoint_write``, ``resume_state_write``, ``export_write``,
``db_commit``, ``generate_step``, ``train_step``. Kinds: ``enospc`` (a full disk), ``oom`` (the text
of a CUDA out-of-memory error), ``crash`` (any other exception), ``stall`` (sleep
``NEGALORA_FAULT_STALL`` seconds, default 5, so that a kill test's SIGKILL lands right there).
"""

import errno
import os
import time

_KINDS = ("enospc", "oom", "crash", "stall")


def _parse(text: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        point, _, rule = item.partition("=")
        kind, _, nth = rule.partition("@")
        if kind not in _KINDS:
            raise ValueError(f"NEGALORA_FAULTS: {item!r}: the kind must be one of {', '.join(_KINDS)}")
        out[point.strip()] = (kind, int(nth) if nth else 0)
    return out


_rules = _parse(os.environ.get("NEGALORA_FAULTS", ""))
_hits: dict[str, int] = {}


def configure(text: str) -> None:
    """Set the rules in this process (tests); ``""`` turns every fault off."""
    global _rules
    _rules = _parse(text)
    _hits.clear()


def inject(point: str, path: object = "") -> None:
    """Raise the configured fault at ``point``, as the real failure would surface there."""
    if not _rules or point not in _rules:
        return
    kind, nth = _rules[point]
    _hits[point] = _hits.get(point, 0) + 1
    if nth and _hits[point] != nth:
        return
    if kind == "stall":
        time.sleep(float(os.environ.get("NEGALORA_FAULT_STALL", "5")))
        return
    if kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path else None)
    if kind == "oom":
        # The text torch.OutOfMemoryError carries; the worker and trainer recognise it by that.
        raise RuntimeError(f"CUDA out of memory (injected at {point})")
    raise RuntimeError(f"injected crash at {point}")
