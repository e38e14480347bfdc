import sqlite3

import pytest
from PIL import Image

from negalora.errors import NegaloraError
from negalora.importing import import_files
from negalora.recipe import Recipe
from negalora.store import Store
from negalora.store.migrations import SCHEMA_VERSION


def _recipe(seed=1):
    return Recipe("a red circle", "", seed, 5, 7.0, 8, 8, "Euler", "demo", "ab" * 32)


def _png(color="red"):
    from negalora.pngmeta import png_bytes

    return png_bytes(Image.new("RGB", (8, 8), color), _recipe())


def test_wal_mode_schema_version_and_content_addressed_files(home):
    store = Store(home)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_version == SCHEMA_VERSION
    img = store.add_generated(_recipe(), None, _png())
    assert img.path == home.images / img.sha256[:2] / f"{img.sha256}.png"
    assert img.path.read_bytes() == _png()
    row = store.image(img.id)
    assert row["seed"] == 1 and row["source"] == "generated"
    assert store.recipe(img.id) == _recipe()
    # the same pixels again: one image row, one file
    again = store.add_generated(_recipe(), None, _png())
    assert again.duplicate and again.id == img.id
    assert store.counts()["all"] == 1


def test_rate_clear_and_undo_with_history(home):
    store = Store(home)
    a = store.add_generated(_recipe(1), None, _png("red")).id
    b = store.add_generated(_recipe(2), None, _png("blue")).id
    store.rate([a, b], "reject", ["hands", "blur"])
    store.rate([a], "pick")
    assert store.counts() == {"all": 2, "reject": 1, "pick": 1, "unrated": 0}
    assert store.image(b)["reasons"] == ["blur", "hands"]
    assert store.image(a)["reasons"] == []  # reasons belong to rejects
    assert store.undo_last_rating() == [{"image_id": a, "verdict": "reject", "reasons": ["blur", "hands"]}]
    assert store.image(a)["verdict"] == "reject"
    store.rate([a], None)
    assert store.image(a)["verdict"] is None
    assert [r["id"] for r in store.images("unrated")] == [a]
    assert [r["id"] for r in store.images("reject")] == [b]
    assert store.db.execute("SELECT count(*) FROM rating_events").fetchone()[0] == 3
    with pytest.raises(NegaloraError, match="image 999"):
        store.rate([999], "pick")


def test_reason_tags_stay_per_image_and_undo_reverts_a_whole_batch(home):
    store = Store(home)
    a = store.add_generated(_recipe(1), None, _png("red")).id
    b = store.add_generated(_recipe(2), None, _png("blue")).id
    store.rate([a], "reject", ["hands"])
    store.rate([b], "reject", ["text"])
    batch = store.rate([a, b], "reject", add_reason="blur")  # a reason key on a multi-selection
    assert store.image(a)["reasons"] == ["blur", "hands"] and store.image(b)["reasons"] == ["blur", "text"]
    again = store.rate([a, b], "reject")  # X keeps each image's own tags
    assert store.image(a)["reasons"] == ["blur", "hands"]
    pick = store.rate([a, b], "pick")
    assert len(store.undo_batch(pick)) == 2  # one undo reverts the whole multi-selection
    assert [store.image(i)["verdict"] for i in (a, b)] == ["reject", "reject"]
    store.undo_batch(again)
    store.undo_batch(batch)
    assert store.image(a)["reasons"] == ["hands"] and store.image(b)["reasons"] == ["text"]
    assert store.undo_batch("no-such-batch") == []


def test_a_write_waits_for_another_process_instead_of_failing(home):
    import threading
    import time

    store = Store(home)
    a = store.add_generated(_recipe(1), None, _png()).id
    other = sqlite3.connect(home.db_path, timeout=30, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO models (name, source, location, hash, created) VALUES ('x', 'demo', 'x', 'h', 'now')")
    threading.Thread(target=lambda: (time.sleep(0.5), other.commit()), daemon=True).start()
    store.rate([a], "reject")  # blocks on the lock, then succeeds
    assert store.image(a)["verdict"] == "reject"
    other.close()


def test_the_same_pixels_add_no_rows(home):
    store = Store(home)
    first = store.add_generated(_recipe(1), None, _png())
    again = store.add_generated(_recipe(1), None, _png())
    assert again.duplicate and again.id == first.id and again.path == first.path
    assert store.db.execute("SELECT count(*) FROM generations").fetchone()[0] == 1


def test_ratings_survive_reopening(home):
    store = Store(home)
    a = store.add_generated(_recipe(1), None, _png()).id
    store.rate([a], "reject")
    store.close()
    assert Store(home).image(a)["verdict"] == "reject"


def test_migration_backs_up_first_and_moves_forward(home, monkeypatch):
    import negalora.store.db as db

    store = Store(home)
    a = store.add_generated(_recipe(1), None, _png()).id
    store.close()
    v2 = "ALTER TABLE images ADD COLUMN note TEXT NOT NULL DEFAULT ''"
    monkeypatch.setattr(db, "MIGRATIONS", [*db.MIGRATIONS, v2])
    monkeypatch.setattr(db, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    store = Store(home)
    assert store.schema_version == SCHEMA_VERSION + 1
    assert store.image(a)["id"] == a
    assert "note" in store.db["images"].columns_dict
    backups = list(home.backups.glob("*.db"))
    assert len(backups) == 1
    old = sqlite3.connect(backups[0])
    assert old.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert old.execute("SELECT count(*) FROM images").fetchone()[0] == 1


def test_newer_schema_is_refused(home):
    Store(home).close()
    conn = sqlite3.connect(home.db_path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    with pytest.raises(NegaloraError, match="newer"):
        Store(home)


def test_import_files_and_folders_refusing_bad_ones(home, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    Image.new("RGB", (16, 12), "green").save(src / "a.png")
    Image.new("RGB", (10, 10), "blue").save(src / "sub" / "b.jpg")
    (src / "broken.png").write_bytes(Image.new("RGB", (4, 4)).tobytes()[:10] + b"\x89PNG")
    good = src / "c.png"
    Image.new("RGB", (20, 20), "white").save(good)
    truncated = src / "d.png"
    truncated.write_bytes(good.read_bytes()[:-30])
    store = Store(home)
    done, refused = import_files(store, [src, tmp_path / "missing"], reject=True, reasons=("artifacts",))
    assert len(done) == 3
    assert {r.path.name for r in refused} == {"broken.png", "d.png", "missing"}
    assert all(r.reason for r in refused)
    assert store.counts()["reject"] == 3
    sizes = {(r["width"], r["height"]) for r in store.images()}
    assert sizes == {(16, 12), (10, 10), (20, 20)}
