"""What an image shows, read back from its pixels, to check that it follows its caption."""

import re
from dataclasses import dataclass

import numpy as np

from negalora.demo_world.pixels import dilate, erode
from negalora.demo_world.scene import Scene, analyse
from negalora.demo_world.world import COLOURS, PALETTE, SHAPES

_RGB = np.array(list(PALETTE.values()), dtype=np.float64)
# Fill of the bounding box: square ~1, circle ~pi/4 (blur lifts both a little). Skew of the row
# profile: ~-0.57 for an apex-up triangle, 0 for the symmetric shapes.
SQUARE_FILL = 0.875
TRIANGLE_SKEW = -0.09
_CAPTION = re.compile(
    rf"\ba ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) on a ({'|'.join(COLOURS)}) background\b", re.IGNORECASE
)


@dataclass(frozen=True)
class Classification:
    colour: str | None  # None when no shape was found
    shape: str | None
    background: str


@dataclass(frozen=True)
class Caption:
    colour: str
    shape: str
    background: str


def nearest_colour(rgb) -> str:
    return COLOURS[int(np.argmin(np.linalg.norm(_RGB - np.asarray(rgb, dtype=np.float64), axis=1)))]


def _shape(scene: Scene, blob: np.ndarray) -> str:
    # Blur moves no mass, so rows and columns of the soft mask keep their sums however blurred the edges:
    # area / (widest row * tallest column) is the fill of the bounding box.
    around = dilate(blob, max(1, round(scene.size / 16))) & ~scene.scratch
    weight = np.where(around, np.clip(scene.share, 0, 1), 0)
    rows, columns = weight.sum(axis=1), weight.sum(axis=0)
    fill = weight.sum() / (rows.max() * columns.max())
    # An apex-up triangle piles its mass low: the row profile is skewed, a circle's or square's is not.
    ys = np.arange(len(rows)) - np.average(np.arange(len(rows)), weights=rows)
    skew = np.average(ys**3, weights=rows) / np.average(ys**2, weights=rows) ** 1.5
    if skew < TRIANGLE_SKEW:
        return "triangle"
    return "square" if fill >= SQUARE_FILL else "circle"


def classify(image) -> Classification:
    """The main shape's colour and kind, and the background colour, from ``image``'s pixels."""
    scene = analyse(image)
    background = nearest_colour(scene.background)
    if not scene.blobs:
        return Classification(None, None, background)
    blob = scene.blobs[0]
    core = erode(blob) & ~scene.scratch  # inner pixels: no edge blended with the background
    pixels = scene.rgb[core if core.any() else blob]
    return Classification(nearest_colour(np.median(pixels, axis=0)), _shape(scene, blob), background)


def parse_caption(text: str) -> Caption:
    """The colour, shape and background that a world caption asks for (anywhere in ``text``)."""
    found = _CAPTION.search(text)
    if found is None:
        raise ValueError(f"not a demo-world caption: {text!r}")
    colour, shape, background = (word.lower() for word in found.groups())
    return Caption(colour, shape, background)


def agrees(classification: Classification, caption: str | Caption) -> tuple[bool, bool]:
    """(colour right, shape right) of an image's classification against its caption."""
    asked = parse_caption(caption) if isinstance(caption, str) else caption
    return classification.colour == asked.colour, classification.shape == asked.shape
