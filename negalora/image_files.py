"""Opening image files the user gives: only the formats on the allow-list reach a decoder, a bomb is refused
before its pixels are decoded, and every refusal is a short reason that names what the file is."""

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from negalora.errors import NegaloraError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}

# PIL plugin names tried when opening; anything else is refused even when renamed to .png, so no
# other parser (EPS through Ghostscript, PSD, ...) ever sees the file.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")

# First bytes of formats people drop by mistake, to name them in the refusal; never parsed further.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"GIF8", "GIF"),
    (b"8BPS", "Photoshop PSD"),
)


class ImageRefused(NegaloraError):
    """A file that is not accepted as an image; the message is the short reason (the caller names the file)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageRefused("no such file") from None
    except OSError as exc:
        raise ImageRefused(f"cannot read ({exc.strerror or exc})") from exc
    if not path.is_file():
        raise ImageRefused("not a file")
    if size == 0:
        raise ImageRefused("zero-byte file")


def open_checked(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Open (header only) with the format allow-list; refuse bombs (PIL's limit, and ``max_pixels`` when
    given) before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefused(_bomb_reason(str(exc))) from exc
    except UnidentifiedImageError as exc:
        raise ImageRefused(unidentified_reason(path)) from exc
    except Exception as exc:  # a damaged header can raise struct.error, IndexError, SyntaxError, ...
        raise ImageRefused(decode_reason(exc)) from exc
    pixels = im.width * im.height
    if max_pixels is not None and pixels > max_pixels:
        im.close()
        raise ImageRefused(f"decompression bomb ({pixels} pixels; the limit is {max_pixels})")
    return im


def probe(path: Path, max_pixels: int | None = None) -> tuple[int, int]:
    """Check the file, decode it fully (so a truncated file fails here) and return its size."""
    path = Path(path)
    check_file(path)
    with open_checked(path, max_pixels) as im:
        try:
            im.load()
        except MemoryError as exc:
            raise ImageRefused("too large to decode (out of memory)") from exc
        except Exception as exc:  # damaged files make PIL raise almost anything (struct.error, IndexError, ...)
            raise ImageRefused(decode_reason(exc)) from exc
        return im.size


def unidentified_reason(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    kind = sniff(head)
    if kind in ALLOWED_FORMATS:
        return f"damaged {kind} file (header unreadable, perhaps truncated)"
    if kind:
        return f"{kind} is not accepted (only {', '.join(ALLOWED_FORMATS)})"
    return "not an image"


def sniff(head: bytes) -> str | None:
    """The kind of file its first 16 bytes show, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return "HEIC/AVIF"
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def decode_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    if "truncated" in text.lower():
        return "truncated file"
    if "MAX_TEXT_CHUNK" in text or "MAX_TEXT_MEMORY" in text:
        # PIL's own limits on PNG text chunks (a zTXt that inflates past 1 MB, over 64 MB of text in all)
        return "PNG text metadata over PIL's safety limit (a decompression bomb in a text chunk?)"
    return f"cannot decode ({text})" if text else f"cannot decode ({type(exc).__name__})"


def _bomb_reason(message: str) -> str:
    found = re.search(r"\((\d+) pixels\)", message)
    return f"decompression bomb ({found.group(1)} pixels)" if found else f"decompression bomb ({message})"


# -- decoding to RGB (training images, init images) -------------------------------------------

# Well above an 8K frame (7680x4320 = 33 MP) and a 50 MP camera, far below a bomb: a 64 MP RGB image
# decodes to 192 MB, while a crafted 40000x40000 PNG of a few KB would ask for 4.8 GB.
MAX_PIXELS = 64_000_000

WHITE = (255, 255, 255)

# Modes PIL converts to 8-bit RGB correctly by itself (LAB and HSV included); the high-depth greys are
# scaled separately, and anything else is refused by name rather than guessed at.
_PLAIN_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)


def load_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Fully decode ``path`` to an 8-bit RGB image, upright per EXIF, alpha flattened onto white.

    Raises ImageRefused with a short reason for anything that cannot be trained on safely.
    """
    path = Path(path)
    check_file(path)
    with open_checked(path, max_pixels) as im:
        try:
            im.load()
            upright = ImageOps.exif_transpose(im)
        except MemoryError as exc:
            raise ImageRefused("too large to decode (out of memory)") from exc
        except Exception as exc:  # damaged files make PIL raise almost anything (struct.error, IndexError, ...)
            raise ImageRefused(decode_reason(exc)) from exc
        return to_rgb(upright)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode PIL decodes; a new image, detached from the file."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(im)
    if im.mode not in _PLAIN_MODES:
        raise ImageRefused(f"unsupported colour mode {im.mode}")
    if _has_alpha(im):
        return _flatten(im.convert("RGBA"))
    return im.convert("RGB")


def _has_alpha(im: Image.Image) -> bool:
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    return im.mode in ("P", "L", "RGB") and "transparency" in im.info  # PNG tRNS chunk


def _flatten(rgba: Image.Image) -> Image.Image:
    """Transparent areas become white: the VAE has no alpha, and PIL's plain convert turns them black."""
    out = Image.new("RGB", rgba.size, WHITE)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """Scale 16-bit and float greys to 0-255 ourselves: PIL's convert("L") clips them instead."""
    values = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
        # Float images are 0-1 by convention; larger values are taken as 0-255 already.
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0  # "I" is how PIL gives 16-bit PNG/TIFF greys in some versions
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")
