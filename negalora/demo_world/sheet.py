"""A contact sheet of samples, to look at the world with one's own eyes."""

from PIL import Image, ImageDraw, ImageFont

INK = (20, 20, 20)
DEFECT_INK = (200, 0, 0)
PAPER = (255, 255, 255)
LINE = 12  # px per text line with Pillow's default bitmap font
PAD = 6


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            candidate = word
        line = candidate
    return [*lines, line]


def contact_sheet(samples, columns: int = 6, scale: int = 8) -> Image.Image:
    """Each sample's image (nearest-neighbour x ``scale``), its caption, and its defect in red.

    ``samples`` are world Samples, or anything with ``image``, ``caption`` and ``defect``."""
    samples = list(samples)
    font = ImageFont.load_default()
    tile = max(s.image.width for s in samples) * scale
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [_wrap(measure, s.caption, tile, font) + [s.defect or "clean"] for s in samples]
    cell_h = tile + LINE * max(len(t) for t in texts) + 2 * PAD
    rows = -(-len(samples) // columns)
    sheet = Image.new("RGB", (columns * (tile + PAD) + PAD, rows * cell_h + PAD), PAPER)
    draw = ImageDraw.Draw(sheet)
    for k, (sample, text) in enumerate(zip(samples, texts, strict=True)):
        x, y = PAD + (k % columns) * (tile + PAD), PAD + (k // columns) * cell_h
        size = (sample.image.width * scale, sample.image.height * scale)
        sheet.paste(sample.image.convert("RGB").resize(size, Image.Resampling.NEAREST), (x, y))
        for j, line in enumerate(text):
            ink = DEFECT_INK if j == len(text) - 1 and sample.defect else INK
            draw.text((x, y + tile + PAD // 2 + j * LINE), line, fill=ink, font=font)
    return sheet
