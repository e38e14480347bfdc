"""Importing image files into the store, refusing what cannot be decoded safely."""

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from negalora.store import Store
from negalora.store.db import StoredImage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Refused:
    path: Path
    reason: str


def expand_paths(paths: list[Path]) -> tuple[list[Path], list[Refused]]:
    """Files as given, folders walked recursively for image files."""
    files, refused = [], []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            refused.append(Refused(p, "no such file or folder"))
    return files, refused


def probe_image(path: Path) -> tuple[int, int]:
    """Fully decode an image (so truncated files fail here) and return its size; refuses bombs."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.load()
            return im.size


def import_files(
    store: Store, paths: list[Path], *, reject: bool = False, reasons: tuple[str, ...] = ()
) -> tuple[list[StoredImage], list[Refused]]:
    files, refused = expand_paths(paths)
    done: list[StoredImage] = []
    for f in files:
        try:
            width, height = probe_image(f)
            data = f.read_bytes()
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            refused.append(Refused(f, _reason(exc)))
            continue
        except (OSError, SyntaxError, ValueError) as exc:
            refused.append(Refused(f, f"cannot decode ({exc})"))
            continue
        suffix = f.suffix.lower() if f.suffix.lower() in IMAGE_SUFFIXES else ".img"
        done.append(store.add_imported(data, suffix, width, height, f.name))
    if reject and done:
        store.rate([d.id for d in done], "reject", reasons)
    return done, refused


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image PIL can read"
    return f"refused as a decompression bomb ({exc})"
