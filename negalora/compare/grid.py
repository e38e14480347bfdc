"""The labelled grid image of a comparison: column headers on top, prompt and seed on the left.

Small cells (the demo model's 64 px) are scaled up by a whole factor with nearest-neighbour so the
grid stays readable and no pixel is invented; the factor is recorded in the metadata.
"""

import io
import json
import textwrap

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from negalora.pngmeta import PARAMETERS_KEY, format_parameters
from negalora.recipe import Recipe

GRID_KEY = "negalora_comparison"
MIN_CELL = 256
BACKGROUND = (24, 24, 27)
TEXT = (230, 230, 235)
MUTED = (150, 150, 160)


def _font(size: int) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, int]:
    """The default font at ``size`` px, and the size it really has."""
    try:
        return ImageFont.load_default(size=size), size
    except TypeError:  # a Pillow without FreeType: the bitmap font
        return ImageFont.load_default(), 11


def upscale_factor(width: int, height: int) -> int:
    return max(1, -(-MIN_CELL // max(1, min(width, height))))


def render_grid(
    cells: list[list[Image.Image]], column_labels: list[str], row_labels: list[tuple[str, int]]
) -> tuple[Image.Image, int]:
    """cells[row][col] → one labelled image; returns it and the upscale factor used."""
    first = cells[0][0]
    factor = upscale_factor(first.width, first.height)
    cw, ch = first.width * factor, first.height * factor
    pad = 8
    (header_font, header_size), (label_font, label_size) = _font(max(14, cw // 16)), _font(max(12, cw // 20))
    header_h = header_size * 3 + pad
    label_w = max(160, cw // 2 + 40)
    width = label_w + len(column_labels) * (cw + pad) + pad
    height = header_h + len(cells) * (ch + pad) + pad
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    chars_per_line = max(8, int(cw / (header_size * 0.55)))
    for c, label in enumerate(column_labels):
        x = label_w + c * (cw + pad)
        text = "\n".join(textwrap.wrap(label, chars_per_line)[:2])
        draw.multiline_text((x, pad), text, fill=TEXT, font=header_font, spacing=2)
    label_chars = max(8, int((label_w - 2 * pad) / (label_size * 0.55)))
    for r, row in enumerate(cells):
        y = header_h + r * (ch + pad)
        prompt, seed = row_labels[r]
        lines = textwrap.wrap(prompt, label_chars)[: max(1, ch // (label_size + 4) - 2)]
        draw.multiline_text((pad, y), "\n".join(lines), fill=TEXT, font=label_font, spacing=4)
        draw.text((pad, y + ch - label_size - 4), f"seed {seed}", fill=MUTED, font=label_font)
        for c, cell in enumerate(row):
            x = label_w + c * (cw + pad)
            img = cell.convert("RGB")
            if factor > 1:
                img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
            grid.paste(img, (x, y))
    return grid, factor


def grid_png_bytes(grid: Image.Image, first_recipe: Recipe, description: dict) -> bytes:
    """The grid as PNG, carrying the first cell's A1111 parameters (as A1111's X/Y plot does) and the
    whole comparison (columns, rows, every cell's recipe) as JSON."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(first_recipe))
    info.add_text(GRID_KEY, json.dumps(description, sort_keys=True))
    buf = io.BytesIO()
    grid.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()
