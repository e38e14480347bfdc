"""Writing an export: the safetensors bytes, a temp file beside the destination (its name starts
with '.' and carries the writer's pid), fsync, then ``os.replace``. A killed export leaves at most
a temp file, never a half destination; the next export removes temps whose writer is gone."""

import os
import re
import secrets
import struct
import time
from pathlib import Path

from negalora import faults
from negalora.atomic import FILE_MODE, _fsync_dir, disk_full, is_disk_full
from negalora.errors import NegaloraError

_TEMP = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp$")
STALE_SECONDS = 24 * 3600  # where a pid cannot be asked about (Windows), a temp this old is stale


def serialize(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def tensor_data(blob: bytes) -> memoryview:
    """The bytes after a safetensors header: what kohya's and A1111's LoRA hashes cover."""
    (n,) = struct.unpack("<Q", blob[:8])
    return memoryview(blob)[8 + n :]


def temp_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _writer_gone(pid: int, path: Path) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C there
        return time.time() - path.stat().st_mtime > STALE_SECONDS
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, owned by someone else
    return False


def clean_stale_temps(folder: Path) -> list[Path]:
    """Remove the temps of exports that were killed (their process is gone); returns them."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        m = _TEMP.match(path.name)
        if m and path.is_file():
            try:
                if _writer_gone(int(m.group(1)), path):
                    path.unlink()
                    removed.append(path)
            except OSError:
                pass  # another export cleaned it first
    return removed


def write_temp(dest: Path, data: bytes) -> Path:
    """``data`` in a new temp file beside ``dest``, flushed to disk."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            faults.inject("export_write", dest)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(dest, exc) from exc
        raise NegaloraError(f"{dest.parent}: cannot write the export there ({exc.strerror or exc})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def commit(tmp: Path, dest: Path) -> None:
    """Put a finished temp file in place in one step."""
    try:
        os.replace(tmp, dest)
    except OSError as exc:
        raise NegaloraError(f"{dest}: cannot replace it ({exc.strerror or exc})") from exc
    _fsync_dir(dest.parent)


def write_atomic(dest: Path, data: bytes) -> None:
    tmp = write_temp(dest, data)
    try:
        commit(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
