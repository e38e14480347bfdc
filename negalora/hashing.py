"""File hashes as the ecosystem uses them, cached by path, size and modification time."""

import hashlib
import json
import os
import struct
from pathlib import Path

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, *, skip_safetensors_header: bool = False) -> str:
    """sha256 of a file; with ``skip_safetensors_header`` only the tensor data after the header
    (kohya's ``sshs_model_hash`` and A1111's LoRA hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if skip_safetensors_header:
            (n,) = struct.unpack("<Q", fh.read(8))
            fh.seek(8 + n)
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashCache:
    """Remembers file hashes so a 7 GB checkpoint is hashed once, as A1111 does."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def get(self, file: Path, *, skip_safetensors_header: bool = False) -> str:
        from negalora.atomic import atomic_write_text

        file = Path(file).resolve()
        st = os.stat(file)
        key = f"{file}|{int(skip_safetensors_header)}"
        stamp = [st.st_size, st.st_mtime_ns]
        cache = self._load()
        hit = cache.get(key)
        if hit and hit.get("stamp") == stamp:
            return hit["sha256"]
        digest = sha256_file(file, skip_safetensors_header=skip_safetensors_header)
        cache[key] = {"stamp": stamp, "sha256": digest}
        try:
            atomic_write_text(self.path, json.dumps(cache))
        except OSError:
            pass  # a cache that cannot be written only costs time
        return digest
