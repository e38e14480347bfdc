"""The database under damage: quick_check at open, backups, restore, disk full, deletion, and the
reconciliation of files changed outside the app."""

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_store import add_generated, generated_png, pixels

from negalora import faults
from negalora.errors import DatabaseDamaged, DiskFull, NegaloraError
from negalora.store import Store
from negalora.store import backups as backup_files
from negalora.store.files import store_bytes
from negalora.store.reconcile import reconcile


@pytest.fixture(autouse=True)
def no_faults():
    yield
    faults.configure("")


def _filled(home, n=5) -> list[int]:
    store = Store(home)
    ids = [add_generated(store, s) for s in range(n)]
    store.rate(ids[:2], "reject", ["blurry"])
    store.rate(ids[2:3], "pick")
    store.close()
    return ids


def _files(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verdicts(store) -> dict:
    return {r["id"]: r["verdict"] for r in store.images()}


# -- damage at open ---------------------------------------------------------------------------


def _smash_page(path, page: int, page_size: int = 4096) -> None:
    with open(path, "r+b") as fh:
        fh.seek(page * page_size)
        fh.write(b"\xa5" * 64)


@pytest.mark.parametrize(
    "damage, words",
    [
        ("page", "quick_check"),
        ("header", "header"),
        ("truncate", "cut short"),
    ],
)
def test_damage_is_detected_at_open_and_the_file_is_never_written(home, cli, damage, words):
    _filled(home)
    Store(home).close()  # the day's backup exists now
    size = home.db_path.stat().st_size
    if damage == "page":
        _smash_page(home.db_path, 2)  # a table's b-tree page
    elif damage == "header":
        with open(home.db_path, "r+b") as fh:
            fh.write(b"not sqlite at all")
    else:
        os.truncate(home.db_path, size // 2 + 100)
    before = _digest(home.db_path)
    with pytest.raises(DatabaseDamaged) as caught:
        Store(home)
    assert words in caught.value.reason
    assert caught.value.backups and "restore-backup" in str(caught.value)
    result = cli("list", "images", "--home", home.root)
    assert result.code == 2 and "damaged database" in result.err and str(caught.value.backups[0]) in result.err
    assert _digest(home.db_path) == before  # untouched by the check and by the failed opens


def test_a_deleted_write_ahead_log_is_detected(home):
    ids = _filled(home, 3)
    # A writer that dies without closing keeps its last commits in the -wal only.
    code = (
        "import os, sys; sys.path.insert(0, 'tests');"
        "from negalora.home import Home; from negalora.store import Store;"
        f"s = Store(Home({str(home.root)!r})); s.rate([{ids[2]}], 'reject'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    wal = home.db_path.with_name("negalora.db-wal")
    assert wal.stat().st_size > 0
    wal.unlink()
    with pytest.raises(DatabaseDamaged, match="write-ahead log"):
        Store(home)


def test_a_crash_with_the_log_in_place_loses_nothing(home):
    ids = _filled(home, 3)
    code = (
        "import os;"
        "from negalora.home import Home; from negalora.store import Store;"
        f"s = Store(Home({str(home.root)!r})); s.rate([{ids[2]}], 'reject'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    store = Store(home)
    assert _verdicts(store)[ids[2]] == "reject"
    store.close()


def test_restore_puts_the_newest_backup_in_place_and_keeps_the_damaged_file(home, cli):
    ids = _filled(home)
    Store(home).close()
    [backup] = backup_files.backups(home)
    _smash_page(home.db_path, 2)
    damaged = _digest(home.db_path)
    listed = cli("restore-backup", "--list", "--home", home.root)
    assert listed.code == 0 and str(backup) in listed.out
    result = cli("restore-backup", "--home", home.root, "--json")
    assert result.code == 0, result.err
    aside = result.json["kept_aside"]
    assert _digest(type(home.db_path)(aside) / "negalora.db") == damaged  # kept, byte for byte
    store = Store(home)
    assert _verdicts(store) == {i: v for i, v in zip(ids, ["reject", "reject", "pick", None, None], strict=True)}
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


def test_restore_refuses_a_damaged_backup(home, cli):
    _filled(home)
    Store(home).close()
    [backup] = backup_files.backups(home)
    _smash_page(backup, 2)
    before = _digest(home.db_path)
    result = cli("restore-backup", "--home", home.root, "--backup", backup, "--force")
    assert result.code == 2 and "the backup itself is damaged" in result.err
    assert _digest(home.db_path) == before


def test_backups_are_daily_whole_and_pruned(home, monkeypatch):
    Store(home).close()
    assert backup_files.backups(home) == []  # nothing worth a backup yet
    _filled(home, 2)
    Store(home).close()
    Store(home).close()
    [first] = backup_files.backups(home)  # one a day, not one per open
    old = time.time() - backup_files.DAILY - 60
    os.utime(first, (old, old))
    Store(home).close()
    assert len(backup_files.backups(home)) == 2
    copy = sqlite3.connect(backup_files.backups(home)[0])
    assert copy.execute("SELECT count(*) FROM ratings").fetchone()[0] == 2
    copy.close()
    store = Store(home)
    for k in range(backup_files.KEEP + 3):
        store.backup(f"t{k}")
    store.close()
    assert len(backup_files.backups(home)) == backup_files.KEEP
    assert not [p for p in home.backups.iterdir() if p.name.startswith(".")]


# -- disk full --------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["image_write", "db_commit"])
def test_disk_full_while_storing_an_image_keeps_everything_before_it(home, point):
    ids = _filled(home, 3)
    store = Store(home)
    files_before = _files(home.images)
    faults.configure(f"{point}=enospc")
    recipe, png = generated_png(99)
    with pytest.raises(DiskFull, match="disk full"):
        store.add_generated(recipe, None, png)
    if point == "db_commit":
        with pytest.raises(DiskFull, match="this change was not saved"):
            store.rate(ids[:1], "pick")
    faults.configure("")
    assert _files(home.images) == files_before  # no new file, no temp file
    assert store.counts() == {"all": 3, "reject": 2, "pick": 1, "unrated": 0}
    assert store.db.execute("SELECT count(*) FROM generations").fetchone()[0] == 3
    add_generated(store, 99)  # space again: the same image goes in
    assert store.counts()["all"] == 4
    store.close()


def test_sqlite_running_out_of_pages_is_a_clear_message_and_a_rollback(home):
    ids = _filled(home, 3)
    store = Store(home)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "database or disk is full"
    with pytest.raises(DiskFull, match="negalora.db: disk full"):
        store.rate(ids, "reject", ["x" * 20_000])
    assert _verdicts(store)[ids[2]] == "pick"
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


# -- deletion and outside changes ---------------------------------------------------------------


def test_delete_removes_rows_ratings_history_and_file(home, cli):
    ids = _filled(home, 3)
    store = Store(home)
    path = store.image(ids[0])["path"]
    store.close()
    result = cli("delete", ids[0], "--home", home.root, "--json")
    assert result.code == 0 and result.json["deleted"] == [ids[0]]
    store = Store(home)
    assert not os.path.exists(path)
    assert ids[0] not in _verdicts(store)
    assert store.db.execute("SELECT count(*) FROM rating_events WHERE image_id = ?", [ids[0]]).fetchone()[0] == 0
    assert store.db.execute("SELECT file_removed FROM deleted_images").fetchall() == [(1,)]
    store.undo_last_rating()  # the pick of ids[2]: the deleted image does not come back
    assert _verdicts(store) == {ids[1]: "reject", ids[2]: None}
    with pytest.raises(NegaloraError, match="no such image"):
        store.delete_images([ids[0]])
    store.close()


def test_outside_changes_are_reconciled_without_dropping_ratings(home, cli):
    ids = _filled(home, 4)
    store = Store(home)
    gone = store.image(ids[0])["path"]
    os.replace(gone, home.root / "elsewhere.png")
    # a crash between an image's file and its row: the file carries its recipe
    recipe, png = generated_png(50)
    _, orphan = store_bytes(home.images, png, ".png")
    # a picture dropped in by hand, under its own name
    (home.images / "zz").mkdir()
    pixels(60).save(home.images / "zz" / "holiday.png")
    (home.images / "zz" / "notes.png").write_text("not an image")
    # a file of an image deleted in the app, whose unlink a crash prevented
    deleted_path = store.image(ids[3])["path"]
    kept = open(deleted_path, "rb").read()
    store.delete_images([ids[3]])
    open(deleted_path, "wb").write(kept)
    store.db.execute("UPDATE deleted_images SET file_removed = 0 WHERE id = ?", [ids[3]])
    store.db.conn.commit()
    # a temp file of a write a crash cut short
    (home.images / "ab").mkdir(exist_ok=True)
    stale = home.images / "ab" / ".abc.png.x1y2.tmp"
    stale.write_bytes(b"\x89PNG half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    young = home.images / "ab" / ".abd.png.x1y3.tmp"  # a live writer may own it
    young.write_bytes(b"\x89PNG")
    store.close()

    result = cli("check", "--home", home.root, "--json")
    assert result.code == 0, result.err
    report = result.json
    assert report["missing"] == [ids[0]]
    assert len(report["adopted"]) == 2 and report["unreadable"] == ["images/zz/notes.png"]
    assert report["deleted_leftovers"] == [rel(home, deleted_path)] and len(report["temps_removed"]) == 1
    store = Store(home)
    rows = {r["id"]: r for r in store.images()}
    assert rows[ids[0]]["missing"] == 1 and rows[ids[0]]["verdict"] == "reject"  # kept while the file is away
    adopted = [rows[i] for i in report["adopted"]]
    assert {r["source"] for r in adopted} == {"generated", "imported"}
    assert store.recipe(next(r["id"] for r in adopted if r["source"] == "generated")) == recipe
    assert not os.path.exists(deleted_path) and not (home.images / "zz" / "holiday.png").exists()
    assert not stale.exists() and young.exists()
    for r in store.images():  # every row that is not flagged points at a file
        assert r["missing"] or os.path.isfile(r["path"])
    store.close()

    os.replace(home.root / "elsewhere.png", gone)  # the file comes back
    again = cli("check", "--home", home.root, "--json").json
    assert again["returned"] == [ids[0]] and again["adopted"] == [] and again["missing"] == []
    assert again["unreadable"] == ["images/zz/notes.png"]  # reported again, never deleted
    (home.images / "zz" / "notes.png").unlink()
    assert cli("check", "--home", home.root).out.strip().endswith("files: in agreement")


def test_a_deleted_images_id_is_never_given_out_again(home):
    ids = _filled(home, 3)
    store = Store(home)
    store.delete_images([ids[-1]])
    assert add_generated(store, 77) == ids[-1] + 1  # "#3" keeps meaning the image that was deleted
    store.close()


def rel(home, path) -> str:
    return os.path.relpath(path, home.root).replace(os.sep, "/")


def _run_with_checkpoint(store, run_id: str) -> Path:
    """A run row with one recorded checkpoint file at step 10."""
    store.create_run(run_id, None, "{}", 3)
    path = store.home.runs / run_id / "checkpoints" / "step-000010.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    store.add_checkpoint(run_id, 10, path, "00")
    return path


def test_a_checkpoint_removed_by_hand_is_marked_removed(home):
    store = Store(home)
    path = _run_with_checkpoint(store, "r1")
    path.unlink()
    report = reconcile(store)
    assert report.checkpoints_gone == [str(path)] and store.checkpoints("r1") == []
    store.close()


def test_the_app_offers_the_latest_backup_and_goes_on_only_if_the_artist_agrees(home):
    from negalora.ui.startup import open_database

    ids = _filled(home, 3)
    Store(home).close()
    assert open_database(home, ask=lambda exc: pytest.fail("asked about a sound database")) == ""
    _smash_page(home.db_path, 2)
    before = _digest(home.db_path)
    asked = []
    with pytest.raises(DatabaseDamaged):
        open_database(home, ask=lambda exc: asked.append(exc) or False)  # "Quit"
    assert asked[0].backups and _digest(home.db_path) == before
    message = open_database(home, ask=lambda exc: True)  # "Use the latest backup"
    assert message.startswith("Restored the backup negalora-") and "damaged" in message
    store = Store(home)
    assert sorted(_verdicts(store)) == ids
    store.close()


def test_a_sound_database_is_replaced_only_with_force(home, cli):
    ids = _filled(home, 2)
    Store(home).close()
    refused = cli("restore-backup", "--home", home.root)
    assert refused.code == 2 and "the database is sound; give --force" in refused.err
    assert cli("restore-backup", "--home", home.root, "--force").code == 0
    store = Store(home)
    assert sorted(_verdicts(store)) == ids
    store.close()


def test_a_missing_database_is_not_quietly_replaced_by_an_empty_one(home, cli):
    _filled(home, 2)
    Store(home).close()  # the day's backup
    os.replace(home.db_path, home.root / "moved-away.db")
    with pytest.raises(DatabaseDamaged, match="the database file is missing"):
        Store(home)
    assert not home.db_path.exists()
    assert cli("restore-backup", "--home", home.root).code == 0
    store = Store(home)
    assert store.counts()["all"] == 2
    store.close()
    os.replace(home.db_path, home.root / "moved-away-2.db")
    home.db_path.with_name("negalora.db-wal").write_bytes(b"\0" * 32)
    with pytest.raises(DatabaseDamaged, match="missing beside its write-ahead log"):
        Store(home)


def test_a_database_being_written_and_checkpointed_is_never_called_damaged(home):
    import threading

    from negalora.store.health import check_file

    _filled(home, 2)
    stop = threading.Event()

    def writer():
        conn = sqlite3.connect(home.db_path, timeout=30)
        n = 0
        while not stop.is_set():
            n += 1
            conn.execute(
                "INSERT INTO models (name, source, location, hash, created) VALUES (?, 'x', 'x', ?, 'x')",
                [f"m{n}", f"{n:064x}"],
            )
            conn.execute(
                "INSERT INTO prompt_sets (name, prompts, seeds, created, updated) VALUES (?, ?, '[]', 'x', 'x')",
                [f"p{n}", "[" + ",".join(['"x"'] * 400) + "]"],
            )  # grows the file page by page
            conn.commit()
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        verdicts = [check_file(home.db_path) for _ in range(400)]
    finally:
        stop.set()
        thread.join()
    assert [v for v in verdicts if v is not None] == []


def test_reconcile_never_follows_a_link_and_drops_only_second_copies(home, tmp_path):
    ids = _filled(home, 2)
    outside = tmp_path / "my-pictures"
    outside.mkdir()
    pixels(70).save(outside / "mine.png")
    (home.images / "linked").symlink_to(outside, target_is_directory=True)
    store = Store(home)
    original = Path(store.image(ids[0])["path"])
    copy = original.with_suffix(".jpeg")  # the same bytes under another suffix
    copy.write_bytes(original.read_bytes())
    report = reconcile(store, temp_age=0)
    assert (outside / "mine.png").exists() and report.adopted == []  # the link's target is the artist's own
    assert report.duplicates_removed == [rel(home, copy)] and not copy.exists() and original.exists()
    assert not reconcile(store, temp_age=0).changed
    store.close()


def test_a_checkpoint_pruned_in_the_database_but_not_on_disk_is_removed(home):
    store = Store(home)
    path = _run_with_checkpoint(store, "r2")
    store.mark_checkpoint_removed("r2", 10)  # keep-last-K's first half, then a kill
    report = reconcile(store)
    assert report.pruned_leftovers == [rel(home, path)] and not path.exists()
    store.close()
