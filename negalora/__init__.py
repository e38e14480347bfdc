"""negalora: train a "wrong" LoRA from the images you reject, and prove it helps."""

__version__ = "0.1.0"
