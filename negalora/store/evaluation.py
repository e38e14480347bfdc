"""The tables that judge a LoRA: test-prompt sets, comparisons and their cells, blind votes, and
the exports made from a run. A mixin of Store (it uses Store's connection and write lock)."""

import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from negalora.errors import NegaloraError
from negalora.store.clock import now as _now

if TYPE_CHECKING:
    from sqlite_utils import Database

    from negalora.home import Home


def row_id(pk: object) -> int:
    """The id sqlite-utils returns for an inserted row (typed ``Any | None`` there)."""
    if not isinstance(pk, int):
        raise NegaloraError(f"the database returned no row id ({pk!r})")
    return pk


class EvaluationTables:
    # What the mixin uses of Store, declared for the type checker.
    if TYPE_CHECKING:
        db: Database
        home: Home

        def _write(self) -> AbstractContextManager[None]: ...
        def run(self, run_id: str) -> dict: ...
        def checkpoints(self, run_id: str, include_removed: bool = False) -> list[dict]: ...

    # -- test-prompt sets ---------------------------------------------------------------

    def save_prompt_set(self, name: str, prompts: list[str], seeds: list[int], settings: dict | None = None) -> int:
        """Create or replace the set called ``name``; returns its id."""
        if not name.strip():
            raise NegaloraError("a prompt set needs a name")
        if not prompts or not seeds:
            raise NegaloraError(f"prompt set {name!r}: needs at least one prompt and one seed")
        stamp = _now()
        with self._write():
            row = self.db.execute("SELECT id FROM prompt_sets WHERE name = ?", [name]).fetchone()
            values = {
                "prompts": json.dumps(list(prompts)),
                "seeds": json.dumps([int(s) for s in seeds]),
                "settings": json.dumps(settings or {}, sort_keys=True),
                "updated": stamp,
            }
            if row:
                self.db.table("prompt_sets").update(row[0], values)
                return row[0]
            return row_id(self.db.table("prompt_sets").insert({"name": name, "created": stamp, **values}).last_pk)

    def prompt_sets(self) -> list[dict]:
        return [_prompt_set_row(r) for r in self.db.query("SELECT * FROM prompt_sets ORDER BY name")]

    def prompt_set(self, name_or_id: str | int) -> dict:
        column = "id" if isinstance(name_or_id, int) else "name"
        rows = list(self.db.query(f"SELECT * FROM prompt_sets WHERE {column} = ?", [name_or_id]))
        if not rows:
            raise NegaloraError(f"prompt set {name_or_id!r}: no such set")
        return _prompt_set_row(rows[0])

    # -- comparisons --------------------------------------------------------------------

    def create_comparison(
        self,
        kind: str,
        columns: list[dict],
        config: dict,
        run_id: str | None = None,
        step: int | None = None,
        lora_path: str = "",
        lora_hash: str = "",
        prompt_set_id: int | None = None,
    ) -> int:
        with self._write():
            return row_id(
                self.db.table("comparisons")
                .insert(
                    {
                        "created": _now(),
                        "kind": kind,
                        "run_id": run_id,
                        "step": step,
                        "lora_path": lora_path,
                        "lora_hash": lora_hash,
                        "prompt_set_id": prompt_set_id,
                        "columns": json.dumps(columns),
                        "config": json.dumps(config, sort_keys=True),
                        "status": "running",
                    }
                )
                .last_pk
            )

    def add_comparison_cell(self, comparison_id: int, row: int, col: int, image_id: int) -> None:
        with self._write():
            self.db.execute(
                "INSERT OR REPLACE INTO comparison_cells (comparison_id, row, col, image_id) VALUES (?, ?, ?, ?)",
                [comparison_id, row, col, image_id],
            )

    def finish_comparison(self, comparison_id: int, status: str, grid_path: Path | None = None) -> None:
        values = {"status": status}
        if grid_path is not None:
            values["grid_path"] = str(Path(grid_path).relative_to(self.home.root))
        with self._write():
            self.db.table("comparisons").update(comparison_id, values)

    def comparison(self, comparison_id: int) -> dict:
        rows = list(self.db.query("SELECT * FROM comparisons WHERE id = ?", [comparison_id]))
        if not rows:
            raise NegaloraError(f"comparison {comparison_id}: no such comparison")
        out = self._comparison_row(rows[0])
        out["cells"] = [
            {**dict(c), "path": str(self.home.root / c["path"])}
            for c in self.db.query(
                "SELECT c.row, c.col, c.image_id, i.path, g.seed, g.prompt, g.negative, g.lora_scale, g.recipe, "
                "r.verdict FROM comparison_cells c JOIN images i ON i.id = c.image_id "
                "LEFT JOIN generations g ON g.id = i.generation_id "
                "LEFT JOIN ratings r ON r.image_id = c.image_id "
                "WHERE c.comparison_id = ? ORDER BY c.row, c.col",
                [comparison_id],
            )
        ]
        return out

    def comparisons(self, run_id: str | None = None) -> list[dict]:
        if run_id is None:
            rows = self.db.query("SELECT * FROM comparisons ORDER BY id DESC")
        else:
            rows = self.db.query("SELECT * FROM comparisons WHERE run_id = ? ORDER BY id DESC", [run_id])
        return [self._comparison_row(r) for r in rows]

    def latest_grid(self, run_id: str) -> Path | None:
        """The grid of the run's latest finished comparison (an export's thumbnail), if any."""
        row = self.db.execute(
            "SELECT grid_path FROM comparisons WHERE run_id = ? AND status = 'done' AND grid_path != '' "
            "ORDER BY id DESC LIMIT 1",
            [run_id],
        ).fetchone()
        return self.home.root / row[0] if row else None

    def _comparison_row(self, row: dict) -> dict:
        out = dict(row)
        out["columns"] = json.loads(row["columns"])
        out["config"] = json.loads(row["config"])
        out["grid_path"] = str(self.home.root / row["grid_path"]) if row["grid_path"] else ""
        return out

    def set_best_step(self, run_id: str, step: int | None) -> None:
        self.run(run_id)  # a clear error for an unknown run
        if step is not None and not any(c["step"] == step for c in self.checkpoints(run_id)):
            kept = ", ".join(str(c["step"]) for c in self.checkpoints(run_id)) or "none"
            raise NegaloraError(f"run {run_id}: has no checkpoint at step {step} (kept: {kept})")
        with self._write():
            self.db.table("runs").update(run_id, {"best_step": step})

    def set_best_scale(self, run_id: str, scale: float | None) -> None:
        """The LoRA strength the artist found best on both passes (A1111's way), for the model card."""
        self.run(run_id)
        if scale is not None and not (0 <= scale <= 10):
            raise NegaloraError(f"scale {scale}: must be between 0 and 10")
        with self._write():
            self.db.table("runs").update(run_id, {"best_scale": scale})

    # -- blind votes ----------------------------------------------------------------------

    def add_vote(
        self,
        a_label: str,
        a_image_id: int,
        b_label: str,
        b_image_id: int,
        a_on_left: bool,
        choice: str,
        run_id: str | None = None,
        step: int | None = None,
        comparison_id: int | None = None,
    ) -> int:
        if choice not in ("left", "right", "tie"):
            raise NegaloraError(f"vote {choice!r}: must be left, right or tie")
        if choice == "tie":
            outcome = "tie"
        else:
            outcome = "a" if (choice == "left") == bool(a_on_left) else "b"
        with self._write():
            return row_id(
                self.db.table("votes")
                .insert(
                    {
                        "created": _now(),
                        "comparison_id": comparison_id,
                        "run_id": run_id,
                        "step": step,
                        "a_label": a_label,
                        "a_image_id": a_image_id,
                        "b_label": b_label,
                        "b_image_id": b_image_id,
                        "a_on_left": int(bool(a_on_left)),
                        "choice": choice,
                        "outcome": outcome,
                    }
                )
                .last_pk
            )

    def votes(self, run_id: str | None = None) -> list[dict]:
        """Votes with the LoRA hash of their comparison (which tells LoRA files apart)."""
        sql = (
            "SELECT v.*, COALESCE(c.lora_hash, '') AS lora_hash FROM votes v "
            "LEFT JOIN comparisons c ON c.id = v.comparison_id"
        )
        if run_id is None:
            return list(self.db.query(sql + " ORDER BY v.id"))
        return list(self.db.query(sql + " WHERE v.run_id = ? ORDER BY v.id", [run_id]))

    # -- exports --------------------------------------------------------------------------

    def add_export(self, run_id: str | None, step: int, fmt: str, path: Path, sha256: str, metadata: dict) -> int:
        with self._write():
            return row_id(
                self.db.table("exports")
                .insert(
                    {
                        "created": _now(),
                        "run_id": run_id,
                        "step": step,
                        "format": fmt,
                        "path": str(Path(path).resolve()),
                        "sha256": sha256,
                        "metadata": json.dumps(metadata, sort_keys=True),
                    }
                )
                .last_pk
            )

    def exports(self, run_id: str | None = None) -> list[dict]:
        sql = "SELECT * FROM exports" + ("" if run_id is None else " WHERE run_id = ?") + " ORDER BY id"
        rows = list(self.db.query(sql, [] if run_id is None else [run_id]))
        for r in rows:
            r["metadata"] = json.loads(r["metadata"])
        return rows


def _prompt_set_row(row: dict) -> dict:
    out = dict(row)
    out["prompts"] = json.loads(row["prompts"])
    out["seeds"] = json.loads(row["seeds"])
    out["settings"] = json.loads(row["settings"])
    return out
