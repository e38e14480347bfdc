"""Opening image files the user gives: only the formats on the allow-list reach a decoder, a bomb is refused
before its pixels are decoded, and every refusal is a short reason that names what the file is."""

import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

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
