"""Atomic file writes: a temp file in the same folder, fsync, then os.replace."""

import errno
import os
import shutil
import tempfile
from pathlib import Path

from negalora import faults
from negalora.errors import DiskFull

NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# mkstemp makes 0600 files; written files get the mode a plain open() would give them.
FILE_MODE = _default_mode()


def disk_full(path: Path, exc: BaseException) -> DiskFull:
    """The one message for a full disk: what could not be written, and how much space is left."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
        left = f"{free / 2**20:.0f} MB free"
    except OSError:
        left = "free space unknown"
    return DiskFull(f"{path}: disk full ({left}); nothing was written and earlier files are untouched")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC however it surfaces: an OSError, or a library's own error that carries the OS text."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def atomic_write_bytes(path: Path, data: bytes, *, fault: str = "file_write") -> None:
    """``fault`` names the point where tests may inject a failure (negalora.faults)."""
    try:
        _atomic_write(Path(path), data, fault)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise disk_full(path, exc) from exc
        raise


def _atomic_write(path: Path, data: bytes, fault: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            faults.inject(fault, path)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
