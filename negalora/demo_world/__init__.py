"""The demo world: procedural images for training the demo model, and detectors that judge them.

Each image is one coloured shape on a coloured background, captioned "a red circle on a blue
background". Some carry a defect that the caption never mentions ("duplicate", "cropped", "scratch").
The detectors find those defects from pixels alone, standing in for the artist who rejects images,
and the classifier reads back colour and shape, to check that generated images follow their caption.
numpy and Pillow only: no torch, no Qt.
"""

from negalora.demo_world.classify import Caption, Classification, agrees, classify, parse_caption
from negalora.demo_world.detect import detect_defects, is_defective
from negalora.demo_world.sheet import contact_sheet
from negalora.demo_world.world import (
    COLOURS,
    DEFAULT_DEFECT_RATE,
    DEFAULT_SIZE,
    DEFECTS,
    PALETTE,
    SHAPES,
    WORDS,
    WRONG,
    Sample,
    all_captions,
    caption_for,
    make_dataset,
    make_sample,
)

__all__ = [
    "COLOURS",
    "DEFAULT_DEFECT_RATE",
    "DEFAULT_SIZE",
    "DEFECTS",
    "PALETTE",
    "SHAPES",
    "WORDS",
    "WRONG",
    "Caption",
    "Classification",
    "Sample",
    "agrees",
    "all_captions",
    "caption_for",
    "classify",
    "contact_sheet",
    "detect_defects",
    "is_defective",
    "make_dataset",
    "make_sample",
    "parse_caption",
]
