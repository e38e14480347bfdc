"""Is the database file sound? Checked before every open, read-only, so a damaged file is never
written to (a read-write connection would checkpoint its log into it on close).

Catches what SQLite alone would not say: a file cut short, a header that is not SQLite's, and a
write-ahead log deleted while its index (``-shm``) was left behind, which silently drops every
change since the last checkpoint. Everything else is ``PRAGMA quick_check``'s to find.
"""

import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"SQLite format 3\x00"
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26


@dataclass(frozen=True)
class Damage:
    path: Path
    reason: str


def sidecar(db_path: Path, suffix: str) -> Path:
    return db_path.with_name(db_path.name + suffix)


def check_file(db_path: Path) -> Damage | None:
    """None when the database is sound or does not exist yet; else what is wrong with it."""
    db_path = Path(db_path)
    wal, shm = sidecar(db_path, "-wal"), sidecar(db_path, "-shm")
    try:
        size = db_path.stat().st_size
    except FileNotFoundError:
        if wal.exists():
            return Damage(db_path, f"the database file is missing beside its write-ahead log ({wal.name})")
        return None
    if size == 0:
        return Damage(db_path, "empty file (0 bytes)") if wal.exists() or shm.exists() else None
    with open(db_path, "rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or head[:16] != MAGIC:
        return Damage(db_path, "not an SQLite database (its header is damaged)")
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return Damage(db_path, f"damaged header (page size {page_size})")
    pages, counter, valid_for = struct.unpack(">I", head[28:32])[0], head[24:28], head[92:96]
    # With a log beside it another process may be checkpointing right now (page 1 is written before the
    # file grows), so the size says nothing for sure; quick_check reads a consistent snapshot instead.
    if not wal.exists():
        if size % page_size:
            return Damage(db_path, f"cut short ({size} bytes is not a whole number of {page_size}-byte pages)")
        if counter == valid_for and pages and size < pages * page_size:
            return Damage(db_path, f"cut short ({size} of {pages * page_size} bytes)")
    if head[18] == 2 and shm.exists() and not wal.exists():
        return Damage(
            db_path, f"its write-ahead log ({wal.name}) was deleted; the changes it held are lost from this file"
        )
    return _quick_check(db_path)


def _quick_check(db_path: Path) -> Damage | None:
    try:
        conn = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        # Only SQLite's "corrupt" and "not a database" are damage; locked, busy or I/O errors say nothing
        # about the file, and opening it for real reports them.
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return Damage(db_path, str(exc))
        return None
    # A row can hold several lines, and SQLite starts the first with "*** in database main ***".
    text = "\n".join(str(r[0]) for r in rows if r[0] != "ok").replace("*** in database main ***", "")
    problems = [line.strip() for line in text.splitlines() if line.strip()]
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return Damage(db_path, f"quick_check: {problems[0]}{more}")
    return None
