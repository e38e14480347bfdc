"""negalora: train a "wrong" LoRA from the images you reject, and prove it helps."""

from negalora.version import __version__

__all__ = ["__version__"]  # and negative_pass, positive_pass, on first use (below)


def __getattr__(name: str):
    # ``from negalora import negative_pass`` without importing torch for every other use of the package
    if name in ("negative_pass", "positive_pass"):
        from negalora import lora_passes

        return getattr(lora_passes, name)
    raise AttributeError(f"module 'negalora' has no attribute {name!r}")
