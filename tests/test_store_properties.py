"""A hypothesis state machine over the store: generate, import, rate, undo, delete, reconcile and
reopen in any order. After every step the database agrees with a plain Python model of it."""

import shutil
import tempfile
from pathlib import Path

from helpers_store import generated_png, pixels
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from negalora.home import Home
from negalora.importing import import_files
from negalora.store import Store
from negalora.store.reconcile import reconcile

VERDICTS = st.sampled_from(["reject", "pick", None])


class StoreMachine(RuleBasedStateMachine):
    @initialize()
    def open(self):
        self.dir = Path(tempfile.mkdtemp(prefix="negalora-prop-"))
        self.home = Home(self.dir / "home")
        self.store = Store(self.home)
        self.verdicts: dict[int, str | None] = {}  # image id -> verdict
        self.by_pixels: dict[int, int] = {}  # pixel seed -> image id
        self.batches: list[list[tuple[int, str | None]]] = []  # undo stack: (image, previous verdict)
        self.next_seed = 0

    def teardown(self):
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _added(self, seed: int, image_id: int) -> None:
        expected = self.by_pixels.get(seed)
        assert expected is None or expected == image_id  # the same pixels are the same image
        self.by_pixels[seed] = image_id
        self.verdicts.setdefault(image_id, None)

    @rule(again=st.booleans())
    def generate(self, again):
        made = [s for s in self.by_pixels if s < 10_000]  # generated, not imported: the same bytes again
        seed = made[0] if again and made else self.next_seed
        self.next_seed += seed == self.next_seed
        recipe, png = generated_png(seed)
        stored = self.store.add_generated(recipe, None, png)
        assert stored.duplicate == (seed in self.by_pixels)
        self._added(seed, stored.id)

    @rule(reject=st.booleans())
    def import_one(self, reject):
        seed = 10_000 + self.next_seed
        self.next_seed += 1
        path = self.dir / f"in{seed}.png"
        pixels(seed).save(path)  # no recipe: an import
        done, refused = import_files(self.store, [path], reject=reject)
        assert not refused and len(done) == 1
        self._added(seed, done[0].id)
        if reject:
            self.batches.append([(done[0].id, self.verdicts[done[0].id])])
            self.verdicts[done[0].id] = "reject"

    @precondition(lambda self: self.verdicts)
    @rule(data=st.data(), verdict=VERDICTS)
    def rate(self, data, verdict):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.verdicts)), min_size=1, max_size=4, unique=True))
        self.store.rate(ids, verdict)
        self.batches.append([(i, self.verdicts[i]) for i in ids])
        for i in ids:
            self.verdicts[i] = verdict

    @rule()
    def undo(self):
        reverted = self.store.undo_last_rating()
        if not self.batches:
            assert reverted == []
            return
        batch = self.batches.pop()
        assert sorted(r["image_id"] for r in reverted) == sorted(i for i, _ in batch)
        for image_id, previous in batch:
            self.verdicts[image_id] = previous

    @precondition(lambda self: self.verdicts)
    @rule(data=st.data())
    def delete(self, data):
        image_id = data.draw(st.sampled_from(sorted(self.verdicts)))
        self.store.delete_images([image_id])
        del self.verdicts[image_id]
        self.by_pixels = {s: i for s, i in self.by_pixels.items() if i != image_id}
        self.batches = [kept for b in self.batches if (kept := [(i, v) for i, v in b if i != image_id])]

    @rule()
    def reconcile_changes_nothing(self):
        assert not reconcile(self.store, temp_age=0).changed

    @rule()
    def reopen(self):
        self.store.close()
        self.store = Store(self.home)

    @invariant()
    def database_agrees_with_the_model(self):
        if not hasattr(self, "store"):
            return
        db = self.store.db
        assert {r["id"]: r["verdict"] for r in self.store.images()} == self.verdicts
        counts = self.store.counts()
        assert counts["all"] == len(self.verdicts)
        for v in ("reject", "pick"):
            assert counts[v] == sum(x == v for x in self.verdicts.values())
        assert counts["unrated"] == sum(x is None for x in self.verdicts.values())
        for table, column in (("ratings", "image_id"), ("rating_events", "image_id")):
            orphans = db.execute(f"SELECT count(*) FROM {table} WHERE {column} NOT IN (SELECT id FROM images)")
            assert orphans.fetchone()[0] == 0
        rows = {r["path"] for r in self.store.images()}
        files = {str(p) for p in self.home.images.rglob("*") if p.is_file()}
        assert rows == files  # every row has its file and every file its row
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []


StoreMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_store_state_machine = StoreMachine.TestCase
