"""The SQLite database (WAL mode, forward migrations) and the operations on it."""

import hashlib
import json
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from negalora import faults
from negalora.atomic import NO_SPACE
from negalora.errors import DatabaseDamaged, DiskFull, NegaloraError
from negalora.home import Home
from negalora.recipe import Recipe
from negalora.store import backups as backup_files
from negalora.store.clock import now
from negalora.store.evaluation import EvaluationTables, row_id
from negalora.store.files import content_path, store_bytes
from negalora.store.health import check_file
from negalora.store.migrations import MIGRATIONS, SCHEMA_VERSION

VERDICTS = ("reject", "pick")


@dataclass(frozen=True)
class StoredImage:
    id: int
    sha256: str
    path: Path  # absolute
    duplicate: bool  # the same pixels were already in the store


class Store(EvaluationTables):
    def __init__(self, home: Home):
        self.home = home
        home.create()
        damage = check_file(home.db_path)
        if damage is not None:
            raise DatabaseDamaged(home.db_path, damage.reason, backup_files.backups(home))
        if not home.db_path.exists() and backup_files.backups(home):
            # A new, empty database would quietly stand in for the lost one.
            raise DatabaseDamaged(home.db_path, "the database file is missing", backup_files.backups(home))
        try:
            conn = sqlite3.connect(str(home.db_path), timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise NegaloraError(f"{home.db_path}: not a usable negalora database ({exc})") from exc
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=FULL")  # a rating survives a power cut, not only a crash
        self.db = Database(conn)
        self._created = []
        self._migrate()
        self.backup_error = ""  # a failed daily backup must not keep the artist out; it is shown instead
        if backup_files.daily_due(home) and self._has_content():
            try:
                self.backup("daily")
            except (OSError, sqlite3.Error, NegaloraError) as exc:
                self.backup_error = f"daily backup failed: {exc}"

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _write(self):
        """A write transaction that takes the write lock first (BEGIN IMMEDIATE). A deferred one that
        reads before it writes fails at once with "database is locked" when another process (the
        worker, a CLI run) commits in between; an immediate one waits for the lock instead."""
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                faults.inject("db_commit", self.home.db_path)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):  # SQLITE_FULL: "database or disk is full"
                raise self._disk_full() from exc
            raise
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise self._disk_full() from exc
            raise

    def _disk_full(self) -> DiskFull:
        return DiskFull(f"{self.home.db_path}: disk full; this change was not saved, and nothing before it was lost")

    # -- schema ---------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise NegaloraError(
                f"{self.home.db_path}: schema version {version} is newer than this negalora "
                f"understands ({SCHEMA_VERSION}); upgrade negalora"
            )
        if version == SCHEMA_VERSION:
            return
        if version > 0:
            self.backup(f"before-v{SCHEMA_VERSION}")  # outside the write lock: the backup API waits on it
        with self._write():  # one process migrates; another waits, then finds nothing to do
            version = self.schema_version
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _statements(MIGRATIONS[target - 1]):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={target}")

    def backup(self, label: str) -> Path:
        """Copy the database with SQLite's backup API into <home>/backups/ (see store.backups)."""
        return backup_files.make_backup(self.db.conn, self.home, label)

    def _has_content(self) -> bool:
        row = self.db.execute("SELECT EXISTS (SELECT 1 FROM images) OR EXISTS (SELECT 1 FROM runs)").fetchone()
        return bool(row[0])

    # -- models ---------------------------------------------------------------------------

    def ensure_model(self, name: str, source: str, location: str, sha256: str) -> int:
        row = self.db.execute("SELECT id FROM models WHERE hash = ?", [sha256]).fetchone()
        if row:
            return row[0]
        with self._write():
            return row_id(
                self.db.table("models")
                .insert({"name": name, "source": source, "location": location, "hash": sha256, "created": now()})
                .last_pk
            )

    def models(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM models ORDER BY id"))

    # -- images ---------------------------------------------------------------------------

    @contextmanager
    def _adding(self):
        """A write transaction that adds image files: a file it created is removed again when the
        transaction fails (a full disk at commit), so no file is left that no row knows."""
        self._created: list[Path] = []
        try:
            with self._write():
                yield
        except BaseException:
            for path in self._created:
                path.unlink(missing_ok=True)
            raise
        finally:
            self._created = []

    def _insert_image(self, data: bytes, suffix: str, row: dict) -> StoredImage:
        sha = hashlib.sha256(data).hexdigest()
        if not content_path(self.home.images, sha, suffix).exists():
            self._created.append(content_path(self.home.images, sha, suffix))
        sha, path = store_bytes(self.home.images, data, suffix)
        existing = self.db.execute("SELECT id FROM images WHERE sha256 = ?", [sha]).fetchone()
        if existing:
            return StoredImage(existing[0], sha, path, True)
        # An id is never given out twice, not even after a delete: "#30" always means one image.
        image_id = 1 + self.db.execute(_NEXT_IMAGE_ID).fetchone()[0]
        self._insert(
            "images",
            {"id": image_id, "sha256": sha, "path": str(path.relative_to(self.home.root)), "created": now(), **row},
        )
        return StoredImage(image_id, sha, path, False)

    def _insert(self, table: str, row: dict) -> int:
        """One row by a plain INSERT (sqlite-utils' insert reads the table's schema on every call: most
        of an image's database time in a batch)."""
        columns = ", ".join(f"[{k}]" for k in row)
        marks = ", ".join("?" for _ in row)
        return row_id(
            self.db.execute(f"INSERT INTO [{table}] ({columns}) VALUES ({marks})", list(row.values())).lastrowid
        )

    def add_generated(self, recipe: Recipe, model_id: int | None, png: bytes) -> StoredImage:
        """Store a generated PNG and its recipe in one transaction (the file is written first).
        The same pixels again return the stored image, marked duplicate, and add no rows."""
        return self.add_generated_many([(recipe, png)], model_id)[0]

    def add_generated_many(self, items: list[tuple[Recipe, bytes]], model_id: int | None) -> list[StoredImage]:
        """Store the images of one batch in one transaction (one commit, not one per image): all of
        them, or, when it fails, none of their rows and none of the files it wrote."""
        with self._adding():
            return [self._add_generated(recipe, model_id, png) for recipe, png in items]

    def _add_generated(self, recipe: Recipe, model_id: int | None, png: bytes) -> StoredImage:
        sha = hashlib.sha256(png).hexdigest()
        existing = self.db.execute("SELECT id, path FROM images WHERE sha256 = ?", [sha]).fetchone()
        if existing:
            return StoredImage(existing[0], sha, self.home.root / existing[1], True)
        gen_id = self._insert(
            "generations",
            {
                "created": now(),
                "prompt": recipe.prompt,
                "negative": recipe.negative,
                "seed": recipe.seed,
                "steps": recipe.steps,
                "guidance": recipe.guidance,
                "scheduler": recipe.scheduler,
                "width": recipe.width,
                "height": recipe.height,
                "model_id": model_id,
                "lora_path": recipe.lora_path,
                "lora_hash": recipe.lora_hash,
                "lora_scale": recipe.lora_scale,
                "noise_device": recipe.noise_device,
                "recipe": recipe.to_json(),
            },
        )
        return self._insert_image(
            png,
            ".png",
            {"width": recipe.width, "height": recipe.height, "source": "generated", "generation_id": gen_id},
        )

    def add_imported(self, data: bytes, suffix: str, width: int, height: int, original_name: str) -> StoredImage:
        with self._adding():
            return self._insert_image(
                data,
                suffix,
                {"width": width, "height": height, "source": "imported", "original_name": original_name},
            )

    def image(self, image_id: int) -> dict:
        rows = list(self.db.query(_IMAGE_SELECT + " WHERE i.id = ?", [image_id]))
        if not rows:
            raise NegaloraError(f"image {image_id}: no such image")
        return _image_row(rows[0], self.home)

    def images(self, verdict: str | None = None, text: str | None = None, limit: int | None = None) -> list[dict]:
        """Images newest first. ``verdict``: reject, pick, unrated or None for all."""
        where, params = [], []
        if verdict == "unrated":
            where.append("r.verdict IS NULL")
        elif verdict:
            where.append("r.verdict = ?")
            params.append(verdict)
        if text:
            where.append("g.prompt LIKE ?")
            params.append(f"%{text}%")
        sql = _IMAGE_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY i.id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_image_row(r, self.home) for r in self.db.query(sql, params)]

    def image_by_sha(self, sha256: str) -> dict | None:
        """The image whose file has this sha256, if the store holds it."""
        rows = list(self.db.query(_IMAGE_SELECT + " WHERE i.sha256 = ?", [sha256]))
        return _image_row(rows[0], self.home) if rows else None

    def source_of(self, image_id: int) -> int | None:
        """The image a re-render was made from (its recipe's init image), if the store still holds it."""
        recipe = self.recipe(image_id)
        if recipe is None or not recipe.init_image:
            return None
        row = self.image_by_sha(recipe.init_image)
        return row["id"] if row else None

    def gallery_rows(
        self, verdict: str | None = None, text: str | None = None, before_id: int | None = None, limit: int = 1000
    ) -> list[dict]:
        """One page of the gallery, newest first, below ``before_id``: id, sha256, path (absolute),
        verdict, reasons, prompt (an import's file name) and seed. Lighter than ``images``."""
        where, params = [], []
        if verdict == "unrated":
            where.append("r.verdict IS NULL")
        elif verdict:
            where.append("r.verdict = ?")
            params.append(verdict)
        if text:
            where.append("coalesce(g.prompt, i.original_name) LIKE ?")
            params.append(f"%{text}%")
        if before_id is not None:
            where.append("i.id < ?")
            params.append(before_id)
        sql = _GALLERY_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY i.id DESC LIMIT {int(limit)}"
        rows = [_image_row(r, self.home) for r in self.db.query(sql, params)]
        for r in rows:
            r["prompt"] = r["prompt"] or ""
        return rows

    def verdicts(self, image_ids: list[int]) -> dict[int, tuple[str, list[str]]]:
        """The verdict and reasons of each of these images that has one."""
        out: dict[int, tuple[str, list[str]]] = {}
        ids = list(image_ids)
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for image_id, verdict, reasons in self.db.execute(
                f"SELECT image_id, verdict, reasons FROM ratings WHERE image_id IN ({marks})", chunk
            ).fetchall():
                out[image_id] = (verdict, json.loads(reasons) if reasons else [])
        return out

    def rejected_at(self, verdict: str = "reject") -> dict[int, str]:
        """When each image with this verdict got it (``images`` does not return the rating time)."""
        return dict(self.db.execute("SELECT image_id, updated FROM ratings WHERE verdict = ?", [verdict]).fetchall())

    def recipe(self, image_id: int) -> Recipe | None:
        row = self.db.execute(
            "SELECT g.recipe FROM images i JOIN generations g ON g.id = i.generation_id WHERE i.id = ?", [image_id]
        ).fetchone()
        if not row:
            return None
        try:
            return Recipe.from_json(row[0])
        except NegaloraError as exc:
            raise NegaloraError(f"image {image_id}: damaged recipe in the database ({exc})") from exc

    def delete_images(self, image_ids: list[int]) -> list[int]:
        """Delete images, their ratings and their history, then their files. The rows go first,
        with a tombstone per image in the same transaction, so a crash in between leaves a file that
        the next start removes (store.reconcile), never a row pointing at a missing file."""
        ids = list(dict.fromkeys(image_ids))
        gone: list[tuple[int, str]] = []
        with self._write():
            for image_id in ids:
                row = self.db.execute(
                    "SELECT sha256, path, generation_id FROM images WHERE id = ?", [image_id]
                ).fetchone()
                if not row:
                    raise NegaloraError(f"image {image_id}: no such image")
                used = self.db.execute(
                    "SELECT (SELECT count(*) FROM comparison_cells WHERE image_id = ?) + "
                    "(SELECT count(*) FROM votes WHERE a_image_id = ? OR b_image_id = ?)",
                    [image_id, image_id, image_id],
                ).fetchone()[0]
                if used:
                    raise NegaloraError(f"image {image_id}: part of a comparison or a vote, so it is kept")
                sha, path, generation_id = row
                self.db.execute("DELETE FROM ratings WHERE image_id = ?", [image_id])
                self.db.execute("DELETE FROM rating_events WHERE image_id = ?", [image_id])
                self.db.execute("DELETE FROM images WHERE id = ?", [image_id])
                if generation_id is not None:
                    self.db.execute(
                        "DELETE FROM generations WHERE id = ? AND NOT EXISTS "
                        "(SELECT 1 FROM images WHERE generation_id = ?)",
                        [generation_id, generation_id],
                    )
                self.db.execute(
                    "INSERT INTO deleted_images (id, sha256, path, deleted) VALUES (?, ?, ?, ?)",
                    [image_id, sha, path, now()],
                )
                gone.append((image_id, path))
        for image_id, path in gone:
            self.remove_deleted_file(image_id, path)
        return ids

    def remove_deleted_file(self, deleted_id: int, path: str) -> bool:
        """Unlink a deleted image's file under the write lock, unless the same pixels came back as a
        new image meanwhile (another process adding them holds that lock while it writes the file)."""
        with self._write():
            if self.db.execute("SELECT 1 FROM images WHERE path = ?", [path]).fetchone():
                removed = False
            else:
                (self.home.root / path).unlink(missing_ok=True)
                removed = True
            self.db.execute("UPDATE deleted_images SET file_removed = 1 WHERE id = ?", [deleted_id])
        return removed

    def set_missing(self, image_ids: list[int], missing: bool) -> None:
        if not image_ids:
            return
        with self._write():
            for image_id in image_ids:
                self.db.execute("UPDATE images SET missing = ? WHERE id = ?", [int(missing), image_id])

    # -- ratings --------------------------------------------------------------------------

    def rate(
        self,
        image_ids: list[int],
        verdict: str | None,
        reasons: list[str] | tuple | None = None,
        add_reason: str | None = None,
    ) -> str:
        """Set (or with ``verdict=None`` clear) the verdict of images; returns the batch id that
        ``undo_batch`` reverts. Reasons belong to rejects: ``reasons=None`` keeps each image's own,
        ``add_reason`` adds a tag to each image's own; a pick or a clear drops them."""
        if verdict is not None and verdict not in VERDICTS:
            raise NegaloraError(f"verdict {verdict!r}: must be reject, pick or clear")
        batch = uuid.uuid4().hex
        with self._write():
            for image_id in image_ids:
                if not self.db.execute("SELECT 1 FROM images WHERE id = ?", [image_id]).fetchone():
                    raise NegaloraError(f"image {image_id}: no such image")
                prev = self.db.execute("SELECT verdict, reasons FROM ratings WHERE image_id = ?", [image_id]).fetchone()
                own = set(json.loads(prev[1])) if prev and prev[0] == "reject" else set()
                if verdict != "reject":
                    tags: set[str] = set()
                else:
                    tags = (own if reasons is None else set(reasons)) | ({add_reason} if add_reason else set())
                reasons_json = json.dumps(sorted(tags))
                self._set_rating(image_id, verdict, reasons_json)
                self.db.table("rating_events").insert(
                    {
                        "image_id": image_id,
                        "verdict": verdict,
                        "reasons": reasons_json,
                        "previous_verdict": prev[0] if prev else None,
                        "previous_reasons": prev[1] if prev else "[]",
                        "created": now(),
                        "batch": batch,
                    }
                )
        return batch

    def _set_rating(self, image_id: int, verdict: str | None, reasons_json: str) -> None:
        if verdict is None:
            self.db.execute("DELETE FROM ratings WHERE image_id = ?", [image_id])
        else:
            self.db.table("ratings").upsert(
                {"image_id": image_id, "verdict": verdict, "reasons": reasons_json, "updated": now()},
                pk="image_id",
            )

    def undo_batch(self, batch: str) -> list[dict]:
        """Revert one ``rate`` call: every image in it gets its previous verdict and reasons back."""
        with self._write():
            rows = self.db.execute(
                "SELECT id, image_id, previous_verdict, previous_reasons FROM rating_events "
                "WHERE batch = ? ORDER BY id DESC",
                [batch],
            ).fetchall()
            for event_id, image_id, prev_verdict, prev_reasons in rows:
                self._set_rating(image_id, prev_verdict, prev_reasons)
                self.db.execute("DELETE FROM rating_events WHERE id = ?", [event_id])
        return [{"image_id": r[1], "verdict": r[2], "reasons": json.loads(r[3])} for r in reversed(rows)]

    def undo_last_rating(self) -> list[dict]:
        """Revert the newest ``rate`` call in the database (from any process); [] when there is none."""
        row = self.db.execute("SELECT batch FROM rating_events ORDER BY id DESC LIMIT 1").fetchone()
        return self.undo_batch(row[0]) if row else []

    def counts(self) -> dict:
        total = self.db.execute("SELECT count(*) FROM images").fetchone()[0]
        by = dict(self.db.execute("SELECT verdict, count(*) FROM ratings GROUP BY verdict").fetchall())
        return {
            "all": total,
            "reject": by.get("reject", 0),
            "pick": by.get("pick", 0),
            "unrated": total - sum(by.values()),
        }

    # -- training runs ------------------------------------------------------------------

    def create_run(self, run_id: str, model_id: int | None, config_json: str, images: int) -> None:
        stamp = now()
        with self._write():
            self.db.table("runs").insert(
                {
                    "id": run_id,
                    "created": stamp,
                    "updated": stamp,
                    "status": "running",
                    "model_id": model_id,
                    "config": config_json,
                    "images": images,
                }
            )

    def update_run(self, run_id: str, **fields) -> None:
        with self._write():
            self.db.table("runs").update(run_id, {**fields, "updated": now()})

    def run(self, run_id: str) -> dict:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        if not rows:
            raise NegaloraError(f"run {run_id}: no such training run")
        return rows[0]

    def runs(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM runs ORDER BY created DESC"))

    def run_model(self, run_id: str) -> dict | None:
        """The model a run was trained on (name, source, location, hash), if recorded."""
        rows = list(
            self.db.query(
                "SELECT m.name, m.source, m.location, m.hash FROM runs r JOIN models m ON m.id = r.model_id "
                "WHERE r.id = ?",
                [run_id],
            )
        )
        return rows[0] if rows else None

    def log_loss(self, run_id: str, step: int, loss: float, lr: float) -> None:
        self.log_losses(run_id, [(step, loss, lr)])

    def log_losses(self, run_id: str, rows: list[tuple[int, float, float]]) -> None:
        """(step, loss, lr) rows of a run's loss curve, in one transaction; a step logged again (after a
        resume) replaces its row."""
        with self._write():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO run_losses (run_id, step, loss, lr) VALUES (?, ?, ?, ?)",
                [(run_id, step, loss, lr) for step, loss, lr in rows],
            )

    def losses(self, run_id: str) -> list[tuple[int, float]]:
        return [
            (r[0], r[1])
            for r in self.db.execute("SELECT step, loss FROM run_losses WHERE run_id = ? ORDER BY step", [run_id])
        ]

    def add_checkpoint(self, run_id: str, step: int, path: Path, sha256: str) -> None:
        with self._write():
            self.db.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, step, path, sha256, created, removed) "
                "VALUES (?, ?, ?, ?, ?, 0)",
                [run_id, step, str(Path(path).relative_to(self.home.root)), sha256, now()],
            )

    def mark_checkpoint_removed(self, run_id: str, step: int) -> None:
        with self._write():
            self.db.execute("UPDATE checkpoints SET removed = 1 WHERE run_id = ? AND step = ?", [run_id, step])

    def checkpoints(self, run_id: str, include_removed: bool = False) -> list[dict]:
        sql = "SELECT * FROM checkpoints WHERE run_id = ?" + ("" if include_removed else " AND removed = 0")
        rows = list(self.db.query(sql + " ORDER BY step", [run_id]))
        for r in rows:
            r["path"] = str(self.home.root / r["path"])
        return rows


_NEXT_IMAGE_ID = """
SELECT max(coalesce((SELECT max(id) FROM images), 0), coalesce((SELECT max(id) FROM deleted_images), 0))
"""

_IMAGE_SELECT = """
SELECT i.id, i.sha256, i.path, i.width, i.height, i.source, i.original_name, i.created, i.generation_id, i.missing,
       g.prompt, g.negative, g.seed, g.steps, g.guidance, g.scheduler, m.name AS model,
       r.verdict, r.reasons
FROM images i
LEFT JOIN generations g ON g.id = i.generation_id
LEFT JOIN models m ON m.id = g.model_id
LEFT JOIN ratings r ON r.image_id = i.id
"""


_GALLERY_SELECT = """
SELECT i.id, i.sha256, i.path, r.verdict, r.reasons, coalesce(g.prompt, i.original_name) AS prompt, g.seed
FROM images i
LEFT JOIN generations g ON g.id = i.generation_id
LEFT JOIN ratings r ON r.image_id = i.id
"""


def _image_row(row: dict, home: Home) -> dict:
    out = dict(row)
    out["path"] = str(home.root / row["path"])
    out["reasons"] = json.loads(row["reasons"]) if row.get("reasons") else []
    return out


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (comments stripped) so they run inside one transaction."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
