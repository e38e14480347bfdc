"""Paths of the files the project ships in ``resources/``."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "resources"
CLIP_TOKENIZER = ROOT / "clip_tokenizer"
SDXL_BASE_CONFIG = ROOT / "sdxl_base"
SDXL_REFINER_CONFIG = ROOT / "sdxl_refiner"
DEMO_MODEL = ROOT / "demo_model"  # the trained demo model's weights (tokenizers: CLIP_TOKENIZER)
DEMO_NAME = "demo"  # how a model spec names the embedded demo model
