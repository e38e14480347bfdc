"""Defect detectors, standing in for the artist who rejects images. Pixels only, no labels."""

import numpy as np

from negalora.demo_world.scene import Scene, analyse

BLOB_SHARE = 0.3  # a second blob counts as a shape when at least this share of the largest one
BLOB_MIN = 0.1  # ... and at least (0.1 S)^2 pixels: specks of noise are not shapes
BORDER_SHARE = 0.2  # cropped: the blob runs along a border for this share of its bounding box
# Not a defect of the world (its images always show their shape) but of a model: the prompt's shape
# is not drawn at all. An artist rejects that image too.
MISSING = "missing"


def _duplicate(scene: Scene) -> bool:
    areas = [int(blob.sum()) for blob in scene.blobs]
    least = max(BLOB_SHARE * areas[0], (BLOB_MIN * scene.size) ** 2) if areas else 0
    return sum(area >= least for area in areas) >= 2


def _cropped(scene: Scene) -> bool:
    if not scene.blobs:
        return False
    blob = scene.blobs[0] & ~scene.scratch  # where a scratch leaves the image is no crop
    rows, cols = np.any(blob, axis=1), np.any(blob, axis=0)
    height, width = rows.sum(), cols.sum()
    along = ((blob[0], width), (blob[-1], width), (blob[:, 0], height), (blob[:, -1], height))
    return any(edge.sum() >= max(2, BORDER_SHARE * extent) for edge, extent in along)


def _missing(scene: Scene) -> bool:
    return not any(int(blob.sum()) >= (BLOB_MIN * scene.size) ** 2 for blob in scene.blobs)


def detect_defects(image) -> set[str]:
    """The defects seen in ``image`` (a PIL image or an RGB array): a subset of DEFECTS; with no
    shape drawn at all, MISSING (and a scratch, if one is there)."""
    scene = analyse(image)
    if _missing(scene):
        return {MISSING, "scratch"} if scene.scratch.any() else {MISSING}
    found = set()
    if scene.scratch.any():
        found.add("scratch")
    if _duplicate(scene):
        found.add("duplicate")
    if _cropped(scene):
        found.add("cropped")
    return found


def is_defective(image) -> bool:
    return bool(detect_defects(image))
