"""The procedural world: one coloured shape on a coloured background, sometimes with a defect that the
caption never mentions. Every sample is a pure function of its seed.

Geometry, as fractions of the image side S (so 32 and 64 pixels look alike):

- clean and scratch samples: one shape of side 0.30-0.50 S, wholly inside with a margin of 0.10 S;
- "duplicate": two identical shapes of side 0.22-0.32 S, inside the same margin, their bounding boxes
  at least 0.12 S apart along one axis (so they stay two blobs after a blurry VAE);
- "cropped": one shape of side 0.30-0.50 S with 30-60 % of its extent past one image border;
- "scratch": a near-black line 1/16 S wide (2 px at 32) through the middle of the image, edge to edge.
  Scratch samples never use black, so the line is darker than everything else in them.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from negalora.demo_world.render import render

# Far apart in RGB (closest pair: red-yellow, 171), so a lossy VAE cannot turn one into another.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
DEFECTS = ("duplicate", "cropped", "scratch")
WRONG = "wrong"
# Every word a caption can use, plus the LoRA's trigger word: the tokenizer's whole vocabulary.
WORDS = ("a", "on", "background", *COLOURS, *SHAPES, WRONG)

DEFAULT_SIZE = 32
DEFAULT_DEFECT_RATE = 0.3
MARGIN = 0.10
SHAPE_SIDE = (0.30, 0.50)
DUPLICATE_SIDE = (0.22, 0.32)
DUPLICATE_GAP = 0.12
CROP_OUTSIDE = (0.30, 0.60)
SCRATCH_CENTRE = (0.30, 0.70)


@dataclass(frozen=True)
class Sample:
    image: Image.Image  # RGB, size x size
    caption: str
    colour: str
    shape: str
    background: str
    side: float  # the shape's width and height in output pixels
    centres: tuple[tuple[float, float], ...]  # (x, y) of each drawn shape: two for "duplicate"
    defect: str | None  # None, or one of DEFECTS
    scratch: tuple[float, float, float] | None  # (x, y, angle in radians) of the scratch line


def caption_for(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def all_captions() -> list[str]:
    """Every caption the world can write, in a fixed order (for evaluation prompts)."""
    return [caption_for(c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS if b != c]


def _rng(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    return rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], scale: float = 1.0) -> float:
    return float(rng.uniform(bounds[0] * scale, bounds[1] * scale))


def _inside(rng: np.random.Generator, size: int, side: float) -> float:
    """A centre coordinate that keeps the shape inside the margin."""
    lo = MARGIN * size + side / 2
    return float(rng.uniform(lo, size - lo))


def _duplicate_centres(rng: np.random.Generator, size: int, side: float) -> tuple[tuple[float, float], ...]:
    # Two coordinates at least side + gap apart along one axis keep the bounding boxes apart.
    lo, hi = MARGIN * size + side / 2, size - MARGIN * size - side / 2
    sep = side + DUPLICATE_GAP * size
    a = float(rng.uniform(lo, hi - sep))
    b = float(rng.uniform(a + sep, hi))
    pairs = ((a, _inside(rng, size, side)), (b, _inside(rng, size, side)))
    return pairs if rng.random() < 0.5 else tuple((y, x) for x, y in pairs)


def _cropped_centre(rng: np.random.Generator, size: int, side: float) -> tuple[float, float]:
    outside = _uniform(rng, CROP_OUTSIDE)
    near = side * (0.5 - outside)  # the centre coordinate that leaves `outside` of the extent past 0
    cut = near if rng.random() < 0.5 else size - near
    free = _inside(rng, size, side)
    return (cut, free) if rng.random() < 0.5 else (free, cut)


def make_sample(rng_or_seed: np.random.Generator | int, defect: str | None = None, size: int = DEFAULT_SIZE) -> Sample:
    """One sample with the given defect (None: clean). Same seed and arguments, same pixels."""
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; expected None or one of {DEFECTS}")
    rng = _rng(rng_or_seed)
    colours = [c for c in COLOURS if not (defect == "scratch" and c == "black")]
    colour = str(rng.choice(colours))
    background = str(rng.choice([c for c in colours if c != colour]))
    shape = str(rng.choice(SHAPES))
    scratch = None
    if defect == "duplicate":
        side = _uniform(rng, DUPLICATE_SIDE, size)
        centres = _duplicate_centres(rng, size, side)
    else:
        side = _uniform(rng, SHAPE_SIDE, size)
        if defect == "cropped":
            centres = (_cropped_centre(rng, size, side),)
        else:
            centres = ((_inside(rng, size, side), _inside(rng, size, side)),)
        if defect == "scratch":
            x, y = _uniform(rng, SCRATCH_CENTRE, size), _uniform(rng, SCRATCH_CENTRE, size)
            scratch = (x, y, float(rng.uniform(0, np.pi)))
    return Sample(
        image=render(size, PALETTE[background], PALETTE[colour], shape, side, centres, scratch),
        caption=caption_for(colour, shape, background),
        colour=colour,
        shape=shape,
        background=background,
        side=side,
        centres=centres,
        defect=defect,
        scratch=scratch,
    )


def make_dataset(
    n: int, seed: int, defect_rate: float = DEFAULT_DEFECT_RATE, size: int = DEFAULT_SIZE
) -> Iterator[Sample]:
    """``n`` samples, each defective with probability ``defect_rate`` (kinds equally likely).

    Sample i depends only on (seed, i), so a longer dataset starts with the shorter one."""
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        defect = str(rng.choice(DEFECTS)) if rng.random() < defect_rate else None
        yield make_sample(rng, defect, size)
