"""Content-addressed image files: images/ab/abcdef….png, written atomically."""

import hashlib
from pathlib import Path

from negalora.atomic import atomic_write_bytes


def content_path(images_dir: Path, sha256: str, suffix: str) -> Path:
    return Path(images_dir) / sha256[:2] / f"{sha256}{suffix}"


def store_bytes(images_dir: Path, data: bytes, suffix: str) -> tuple[str, Path]:
    """Write ``data`` once under its sha256; an existing identical file is left alone."""
    digest = hashlib.sha256(data).hexdigest()
    path = content_path(images_dir, digest, suffix)
    if not path.exists():
        atomic_write_bytes(path, data, fault="image_write")
    return digest, path
