"""Finding a scratch: a long, straight, thin dark line, even where blur and noise break it up.

Dark-line pixels are found as a valley of brightness (darker than the closing of the luminance, which a
max-then-min filter a few pixels wide fills in): a shape is too wide to be a valley, a scratch is not.
A Hough vote over angles then finds the straight strip holding the most valley pixels; it is a scratch
when those pixels cover much of the image along the strip, gaps allowed (where the line crosses a shape
almost as dark as itself)."""

import numpy as np

from negalora.demo_world.pixels import box_mean, luminance, max_filter, min_filter

VALLEY_DEPTH = 20.0  # luminance below the closing
VALLEY_RADIUS = 1 / 16  # of the image side: 2 px at 32, wider than a blurred 2 px scratch
SMOOTH_RADIUS = 1 / 64  # of the image side: none at 32, a 3x3 mean at 64, where noise is finer than the line
STRIP = 1 / 16  # half-width of a Hough strip, of the image side
# A scratch covers this share of the image side along its strip (every scratch crosses at least 0.7 of
# it; the tips of two small dark shapes in a row cover at most about 0.55).
COVER = 0.7
ANGLES = np.deg2rad(np.arange(0.0, 180.0, 1.0))


def scratch_distance(rgb: np.ndarray) -> np.ndarray | None:
    """Each pixel's signed distance (px) from the scratch line, or None when there is no scratch."""
    h, w = rgb.shape[:2]
    size = max(h, w)
    luma = box_mean(luminance(rgb), round(size * SMOOTH_RADIUS))
    radius = max(1, round(size * VALLEY_RADIUS))
    ys, xs = np.nonzero(min_filter(max_filter(luma, radius), radius) - luma > VALLEY_DEPTH)
    if len(xs) < COVER * size:
        return None
    normals = np.stack([np.cos(ANGLES), np.sin(ANGLES)])
    rho = np.stack([xs, ys], axis=1) @ normals  # (pixels, angles)
    half = size * STRIP
    # Bins of one half-width: a strip is two neighbouring bins, so every line falls wholly in one.
    bins = np.floor(rho / half).astype(int)
    bins -= bins.min()
    width = bins.max() + 2  # one empty bin at the end, so every bin has a right-hand neighbour
    votes = np.bincount((bins + width * np.arange(len(ANGLES))).ravel(), minlength=width * len(ANGLES))
    counts = votes.reshape(len(ANGLES), width)
    pairs = counts[:, :-1] + counts[:, 1:]
    angle, first = np.unravel_index(np.argmax(pairs), pairs.shape)
    theta = ANGLES[angle]
    centre = np.median(rho[(bins[:, angle] == first) | (bins[:, angle] == first + 1), angle])
    across = rho[:, angle] - centre
    along = np.floor(ys * np.cos(theta) - xs * np.sin(theta)).astype(int)
    along -= along.min()
    # A step along the strip counts when the valley there is thin: at least twice as much of it inside
    # the strip as beside it. The broad valley at the tip of a small dark shape is not.
    inside = np.bincount(along[np.abs(across) <= half], minlength=along.max() + 1)
    beside = np.bincount(along[(np.abs(across) > half) & (np.abs(across) <= 3 * half)], minlength=along.max() + 1)
    if np.sum((inside > 0) & (2 * beside <= inside)) < COVER * size:
        return None
    grid_y, grid_x = np.mgrid[0:h, 0:w]
    return grid_x * np.cos(theta) + grid_y * np.sin(theta) - centre
