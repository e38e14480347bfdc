"""What an image shows, from its pixels alone: background colour, scratch line, shape blobs.

Thresholds are fractions of the image side or of colour distances, so they hold at 32 and 64 px and
on blurry, noisy generated images (the tests check them after a VAE-like degradation)."""

from dataclasses import dataclass

import numpy as np

from negalora.demo_world.pixels import components, dilate, rgb_array
from negalora.demo_world.scratch import scratch_distance

FOREGROUND_DISTANCE = 70.0  # RGB distance from the background; palette colours are >= 171 apart
SCRATCH_BAND = 5 / 64  # half-width of the band masked around a scratch line, of the image side (2.5 px at 32)


@dataclass(frozen=True, eq=False)
class Scene:
    rgb: np.ndarray  # (H, W, 3) float
    background: np.ndarray  # RGB
    colour: np.ndarray | None  # RGB of the shapes, None when there are none
    share: np.ndarray  # per pixel, how far from the background towards the shapes' colour (0..1 and beyond)
    scratch: np.ndarray  # bool mask of a band around the scratch line; all False without one
    blobs: list[np.ndarray]  # the shapes' masks, largest first

    @property
    def size(self) -> int:
        return max(self.rgb.shape[:2])


def _border(rgb: np.ndarray) -> np.ndarray:
    return np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])


def analyse(image) -> Scene:
    rgb = rgb_array(image)
    size = max(rgb.shape[:2])
    background = np.median(_border(rgb), axis=0)
    distance = scratch_distance(rgb)
    scratch = np.zeros(rgb.shape[:2], bool) if distance is None else np.abs(distance) <= SCRATCH_BAND * size
    rough = (np.linalg.norm(rgb - background, axis=-1) > FOREGROUND_DISTANCE) & ~scratch
    if not rough.any():
        return Scene(rgb, background, None, np.zeros(rgb.shape[:2]), scratch, [])
    colour = np.median(rgb[rough], axis=0)
    # Cut at halfway between background and shape colour: blobs keep their true outline when blurred.
    towards = colour - background
    share = (rgb - background) @ towards / max(float(towards @ towards), 1e-9)
    shapes = (share > 0.5) & ~scratch
    if distance is not None:  # bridge the band where it cuts a shape in two, so one shape stays one blob
        reach = int(np.ceil(2 * SCRATCH_BAND * size)) + 1
        shapes |= scratch & dilate(shapes & (distance > 0), reach) & dilate(shapes & (distance < 0), reach)
    return Scene(rgb, background, colour, share, scratch, components(shapes))
