"""Small numpy image helpers (scipy is not a dependency): RGB arrays, dilation, connected components."""

import numpy as np
from PIL import Image

LUMA = np.array([0.299, 0.587, 0.114])


def rgb_array(image) -> np.ndarray:
    """A float (H, W, 3) array from a PIL image or an array in 0..255."""
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.float64)[..., :3]


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ LUMA


def _neighbourhood(values: np.ndarray, fill, reduce) -> np.ndarray:
    """``reduce`` (np.maximum or np.minimum) over each pixel's 3x3 neighbourhood, one axis at a time;
    outside the image counts as ``fill``."""
    h, w = values.shape
    padded = np.full((h + 2, w + 2), fill, dtype=values.dtype)
    padded[1:-1, 1:-1] = values
    rows = reduce(reduce(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return reduce(reduce(rows[:-2], rows[1:-1]), rows[2:])


def max_filter(values: np.ndarray, radius: int = 1) -> np.ndarray:
    for _ in range(radius):
        values = _neighbourhood(values, -np.inf, np.maximum)
    return values


def min_filter(values: np.ndarray, radius: int = 1) -> np.ndarray:
    for _ in range(radius):
        values = _neighbourhood(values, np.inf, np.minimum)
    return values


def box_mean(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over each pixel's (2 radius + 1)^2 square, the border repeated outwards."""
    h, w = values.shape
    side = 2 * radius + 1
    padded = np.pad(values, radius, mode="edge")
    total = np.zeros_like(values)
    for dy in range(side):
        for dx in range(side):
            total += padded[dy : dy + h, dx : dx + w]
    return total / side**2


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    for _ in range(radius):
        mask = _neighbourhood(mask, False, np.maximum)
    return mask


def erode(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    return ~dilate(~mask, radius)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of ``mask`` as boolean masks, largest first (ties: raster order)."""
    h, w = mask.shape
    none = h * w
    # Each pixel takes the smallest pixel index in its component: spread minima to neighbours, and
    # jump through labels (a label is itself a pixel of the same component) to converge in few rounds.
    labels = np.where(mask, np.arange(none).reshape(h, w), none)
    while True:
        spread = np.where(mask, _neighbourhood(labels, none, np.minimum), none)
        spread[mask] = spread.ravel()[spread[mask]]
        if np.array_equal(spread, labels):
            break
        labels = spread
    roots, areas = np.unique(labels[mask], return_counts=True)
    order = sorted(range(len(roots)), key=lambda k: (-areas[k], roots[k]))
    return [labels == roots[k] for k in order]
