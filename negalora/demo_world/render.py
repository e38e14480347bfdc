"""Drawing at 4x and box-downsampling: smooth edges, and the same bytes on every machine."""

import math

from PIL import Image, ImageDraw

SUPERSAMPLE = 4
SCRATCH_RGB = (10, 10, 10)  # darker than every palette colour but black, which scratch samples never use
SCRATCH_WIDTH = 1 / 16  # of the image side: 2 px at 32


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, side: float, centre: tuple[float, float], rgb) -> None:
    x, y = centre[0] * SUPERSAMPLE, centre[1] * SUPERSAMPLE
    h = side * SUPERSAMPLE / 2
    box = (x - h, y - h, x + h - 1, y + h - 1)  # Pillow's boxes include their last pixel
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":  # apex up, base as wide as it is tall: half its bounding box
        draw.polygon(((x, y - h), (x + h, y + h), (x - h, y + h)), fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _draw_scratch(draw: ImageDraw.ImageDraw, size: int, scratch: tuple[float, float, float]) -> None:
    x, y, angle = scratch[0] * SUPERSAMPLE, scratch[1] * SUPERSAMPLE, scratch[2]
    reach = 2 * size * SUPERSAMPLE  # past both borders whatever the angle
    dx, dy = math.cos(angle) * reach, math.sin(angle) * reach
    width = max(1, round(size * SCRATCH_WIDTH * SUPERSAMPLE))
    draw.line(((x - dx, y - dy), (x + dx, y + dy)), fill=SCRATCH_RGB, width=width)


def render(size: int, background, colour, shape: str, side: float, centres, scratch) -> Image.Image:
    """The image: ``shape`` of ``side`` px at each of ``centres``, then the scratch line if any."""
    big = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), background)
    draw = ImageDraw.Draw(big)
    for centre in centres:
        _draw_shape(draw, shape, side, centre, colour)
    if scratch is not None:
        _draw_scratch(draw, size, scratch)
    return big.resize((size, size), Image.Resampling.BOX)
