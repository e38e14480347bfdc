"""Bring the database and the files on disk back into agreement, at start and by `negalora check`.

Nothing the artist made is dropped:
- an image whose file went missing keeps its row and rating, flagged ``missing`` until it returns;
- an image file the database does not know is adopted: a PNG that carries negalora's recipe (one a
  crash left behind between its write and its row) gets its generation back, others come in as
  imports; a file deleted in the app (its tombstone says so) is removed instead;
- a second copy of pixels the store holds is removed, links are never followed;
- a checkpoint file removed by hand is marked removed, one marked removed is deleted; temp files
  of writes a crash cut short are removed once older than ``temp_age`` seconds (a live writer may
  own a young one).
"""

import hashlib
import io
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from negalora.store.db import Store
from negalora.store.files import content_path

TEMP_AGE = 3600.0
_TEMP = re.compile(r"^\..+\.tmp$|^\.lora-")


@dataclass
class Reconciled:
    missing: list[int] = field(default_factory=list)  # images whose file is gone (rows and ratings kept)
    returned: list[int] = field(default_factory=list)  # images whose file is back
    adopted: list[int] = field(default_factory=list)  # files found on disk, now images
    unreadable: list[str] = field(default_factory=list)  # files found on disk that are not images: left alone
    deleted_leftovers: list[str] = field(default_factory=list)  # files of images deleted in the app
    duplicates_removed: list[str] = field(default_factory=list)  # second copies of pixels the store holds
    checkpoints_gone: list[str] = field(default_factory=list)
    pruned_leftovers: list[str] = field(default_factory=list)  # checkpoints keep-last-K removed, files left
    temps_removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def lines(self) -> list[str]:
        out = []
        for label, items in (
            ("image files missing (ratings kept)", self.missing),
            ("image files back", self.returned),
            ("image files adopted", self.adopted),
            ("files in images/ that are not images (left alone)", self.unreadable),
            ("files of deleted images removed", self.deleted_leftovers),
            ("second copies of stored images removed", self.duplicates_removed),
            ("checkpoint files gone", self.checkpoints_gone),
            ("files of pruned checkpoints removed", self.pruned_leftovers),
            ("temp files of interrupted writes removed", self.temps_removed),
        ):
            if items:
                out.append(f"{label}: {len(items)}")
        return out


def reconcile(store: Store, *, temp_age: float = TEMP_AGE) -> Reconciled:
    home = store.home
    report = Reconciled()
    _remove_stale_temps(home.root, temp_age, report)
    rows = store.db.execute("SELECT id, path, missing FROM images").fetchall()
    known = {path for _, path, _ in rows}
    for image_id, path, missing in rows:
        present = (home.root / path).is_file()
        if not present and not missing:
            report.missing.append(image_id)
        elif present and missing:
            report.returned.append(image_id)
    store.set_missing(report.missing, True)
    store.set_missing(report.returned, False)
    tombstones = dict(store.db.execute("SELECT path, id FROM deleted_images WHERE file_removed = 0").fetchall())
    for file in _own_files(home.images):
        rel = file.relative_to(home.root).as_posix()
        if rel in known or _TEMP.match(file.name):
            continue
        if rel in tombstones:
            if store.remove_deleted_file(tombstones[rel], rel):
                report.deleted_leftovers.append(rel)
            continue
        adopted, duplicate = _adopt(store, file)
        if adopted is None:
            report.unreadable.append(rel)
        elif duplicate:
            report.duplicates_removed.append(rel)
        elif adopted not in report.adopted:
            report.adopted.append(adopted)
    for run in store.runs():
        for ckpt in store.checkpoints(run["id"], include_removed=True):
            path = Path(ckpt["path"])
            if not ckpt["removed"] and not path.is_file():
                store.mark_checkpoint_removed(run["id"], ckpt["step"])
                report.checkpoints_gone.append(ckpt["path"])
            elif ckpt["removed"] and path.is_file():  # keep-last-K marked it, then a kill came before the unlink
                path.unlink(missing_ok=True)
                path.with_name(path.name.replace(".safetensors", ".state.safetensors")).unlink(missing_ok=True)
                report.pruned_leftovers.append(str(path.relative_to(home.root)))
    return report


def _own_files(images: Path) -> list[Path]:
    """Files in images/<xx>/, never through a link: a link could lead to the artist's own pictures."""
    if not images.is_dir() or images.is_symlink():
        return []
    out = []
    for folder in sorted(images.iterdir()):
        if folder.is_symlink() or not folder.is_dir():
            continue
        out += [f for f in sorted(folder.iterdir()) if not f.is_symlink() and f.is_file()]
    return out


def _adopt(store: Store, file: Path) -> tuple[int | None, bool]:
    """The image id the file now belongs to (None when it is not an image negalora accepts), and
    whether it was only a second copy of pixels the store already holds."""
    from PIL import Image

    from negalora.image_files import probe
    from negalora.pngmeta import read_recipe

    try:
        width, height = probe(file)
        data = file.read_bytes()
        recipe = None
        if file.suffix.lower() == ".png":
            with Image.open(io.BytesIO(data)) as im:
                try:
                    recipe = read_recipe(im)
                except Exception:  # noqa: BLE001 - a damaged recipe chunk: adopt it as an import
                    recipe = None
    except Exception:  # noqa: BLE001 - PIL raises many kinds on damaged files; they are reported, not fatal
        return None, False
    sha = hashlib.sha256(data).hexdigest()
    known = store.db.execute("SELECT id, path FROM images WHERE sha256 = ?", [sha]).fetchone()
    if known and (store.home.root / known[1]).is_file():
        file.unlink(missing_ok=True)  # a second copy of pixels the store holds (another suffix): nothing is lost
        return known[0], True
    if file != content_path(store.home.images, sha, file.suffix.lower()):
        # Named by hand, not by its content: stored under its content name (a copy), then the stray removed.
        stored = store.add_imported(data, file.suffix.lower(), width, height, file.name)
        file.unlink(missing_ok=True)
        return stored.id, False
    if recipe is not None:
        model = store.db.execute("SELECT id FROM models WHERE hash = ?", [recipe.model_hash]).fetchone()
        return store.add_generated(recipe, model[0] if model else None, data).id, False
    return store.add_imported(data, file.suffix.lower(), width, height, file.name).id, False


def _remove_stale_temps(root: Path, age: float, report: Reconciled) -> None:
    now = time.time()
    for folder in (root / "images", root / "runs", root / "exports", root / "backups", root):
        if not folder.is_dir():
            continue
        # At the top of the home only negalora's own restore temp: the home may be a folder with other things in it.
        walker = folder.rglob(".*") if folder != root else folder.glob(".negalora.db.*.tmp")
        for path in list(walker):
            if not _TEMP.match(path.name) or path.is_symlink():
                continue
            try:
                if now - path.stat().st_mtime < age:
                    continue
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError:
                continue
            report.temps_removed.append(str(path.relative_to(root)))
