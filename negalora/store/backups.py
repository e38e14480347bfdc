"""Database backups (SQLite's backup API) in <home>/backups/, and putting one back in place.

A backup is taken before each migration and once a day. It is written to a temp file, checked,
fsynced, then renamed, so a crash leaves either a whole backup or none. Restoring never deletes the
database it replaces: a copy goes to <home>/damaged/<time>/ first.
"""

import os
import re
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from negalora.atomic import _fsync_dir
from negalora.errors import NegaloraError
from negalora.home import Home
from negalora.store.health import check_file, sidecar

KEEP = 10  # newest backups kept; older ones are pruned after each new one
DAILY = 24 * 3600
_NAME = re.compile(r"^negalora-(\d{8}T\d{6}\d*)-(.+)\.db$")


def backups(home: Home) -> list[Path]:
    """Backups, newest first."""
    if not home.backups.is_dir():
        return []
    found = [(m.group(1), p) for p in home.backups.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def taken_at(path: Path) -> datetime:
    m = _NAME.match(Path(path).name)
    if m is None:
        raise NegaloraError(f"{path}: not a negalora backup name")
    stamp = m.group(1)
    return datetime.strptime(stamp[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


def make_backup(conn: sqlite3.Connection, home: Home, label: str) -> Path:
    home.backups.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    target = home.backups / f"negalora-{stamp}-{label}.db"
    tmp = home.backups / f".{target.name}.{os.getpid()}.tmp"
    try:
        dest = sqlite3.connect(str(tmp))
        try:
            conn.backup(dest)
            ok = dest.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            dest.close()
        if ok != "ok":
            raise NegaloraError(f"{target}: the backup does not check out ({ok})")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(home.backups)
    prune(home)
    return target


def prune(home: Home, keep: int = KEEP) -> None:
    for old in backups(home)[keep:]:
        for part in (sidecar(old, "-wal"), sidecar(old, "-shm"), old):
            part.unlink(missing_ok=True)


def daily_due(home: Home) -> bool:
    newest = backups(home)
    return not newest or time.time() - newest[0].stat().st_mtime >= DAILY


def restore_backup(home: Home, backup: Path | None = None, *, force: bool = False) -> tuple[Path, Path | None]:
    """Put ``backup`` (default: the newest sound one) in place of the database; returns it and the
    folder the old database was kept in. A sound database is replaced only with ``force``.

    The order keeps a database in place at every moment: the backup is copied beside it first, the
    old files are copied aside, its log and index are moved aside, and one rename swaps the file."""
    damage = check_file(home.db_path)
    if home.db_path.exists() and damage is None and not force:
        raise NegaloraError(f"{home.db_path}: the database is sound; give --force to replace it with a backup anyway")
    candidates = [Path(backup)] if backup else backups(home)
    if not candidates:
        raise NegaloraError(f"{home.backups}: no backup to restore")
    chosen = None
    for candidate in candidates:
        if not candidate.is_file():
            raise NegaloraError(f"{candidate}: no such backup")
        problem = check_file(candidate)
        if problem is None:
            chosen = candidate
            break
        if backup:
            raise NegaloraError(f"{candidate}: the backup itself is damaged ({problem.reason})")
    if chosen is None:
        raise NegaloraError(f"{home.backups}: every backup is damaged")
    tmp = home.root / f".{home.db_path.name}.restore.tmp"
    _copy_synced(chosen, tmp)
    aside = None
    wal, shm = sidecar(home.db_path, "-wal"), sidecar(home.db_path, "-shm")
    if home.db_path.exists() or wal.exists():
        aside = home.root / "damaged" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        aside.mkdir(parents=True)
        if home.db_path.exists():
            _copy_synced(home.db_path, aside / home.db_path.name)
        for part in (wal, shm):  # an old log must never be replayed onto the restored file
            if part.exists():
                os.replace(part, aside / part.name)
        _fsync_dir(aside)
    os.replace(tmp, home.db_path)
    _fsync_dir(home.root)
    return chosen, aside


def _copy_synced(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    with open(dest, "rb") as fh:
        os.fsync(fh.fileno())
