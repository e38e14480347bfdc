"""A writer for the kill tests: it works on a home until it is killed, and says on stdout what
it is about to do ("begin") and what it has done ("ok"), one JSON line each, flushed.

    python tests/helpers_kill_child.py store HOME SEED      # generate, import, rate, undo, delete, back up (no model)
    python tests/helpers_kill_child.py generate HOME SEED   # render with the demo model, rate each image
    python tests/helpers_kill_child.py train HOME SEED      # the trainer, called directly (24 steps, as the CLI test)
    python tests/helpers_kill_child.py export HOME RUN OUT  # export_lora, called directly (kohya, no reload check)
"""

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_store import generated_png, pixels  # noqa: E402

from negalora.home import Home  # noqa: E402
from negalora.importing import import_files  # noqa: E402
from negalora.store import Store  # noqa: E402


def say(kind: str, **payload) -> None:
    sys.stdout.write(f"{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()


def ids(store) -> list[int]:
    return [r[0] for r in store.db.execute("SELECT id FROM images ORDER BY id")]


def rate(store, rnd) -> None:
    known = ids(store)
    if not known:
        return
    chosen = rnd.sample(known, min(len(known), rnd.randint(1, 3)))
    verdict = rnd.choice(["reject", "pick", None])
    say("begin", op="rate", after={str(i): verdict for i in chosen})
    store.rate(chosen, verdict)
    say("ok", op="rate", after={str(i): verdict for i in chosen})


def undo(store) -> None:
    row = store.db.execute("SELECT batch FROM rating_events ORDER BY id DESC LIMIT 1").fetchone()
    if not row:
        return
    events = store.db.execute(
        "SELECT image_id, previous_verdict FROM rating_events WHERE batch = ? ORDER BY id", [row[0]]
    ).fetchall()
    after = {str(i): v for i, v in events}
    say("begin", op="undo", after=after)
    store.undo_batch(row[0])
    say("ok", op="undo", after=after)


def store_loop(home: Home, seed: int) -> None:
    rnd = random.Random(seed)
    store = Store(home)
    inbox = home.root.parent / "inbox"
    inbox.mkdir(exist_ok=True)
    say("ready")
    n = 0
    while True:
        n += 1
        r = rnd.random()
        if r < 0.4:
            recipe, png = generated_png(seed * 100_000 + n)
            say("begin", op="add")
            stored = store.add_generated(recipe, None, png)
            say("ok", op="add", id=stored.id)
        elif r < 0.5:
            path = inbox / f"{seed}-{n}.png"
            pixels(seed * 100_000 + n + 50_000).save(path)
            say("begin", op="import")
            done, _ = import_files(store, [path])
            say("ok", op="import", id=done[0].id)
        elif r < 0.85:
            rate(store, rnd)
        elif r < 0.93:
            undo(store)
        elif r < 0.95:
            say("begin", op="backup")
            store.backup("kill-test")  # a kill here must leave whole backups only
            say("ok", op="backup")
        elif r < 0.96:
            from negalora.store.reconcile import reconcile

            say("begin", op="reconcile")
            reconcile(store, temp_age=0)
            say("ok", op="reconcile")
        else:
            known = ids(store)
            if len(known) > 5:
                victim = rnd.choice(known)
                say("begin", op="delete", deleted=[victim])
                store.delete_images([victim])
                say("ok", op="delete", deleted=[victim])


def generate_loop(home: Home, seed: int) -> None:
    from negalora.device import choose_placement
    from negalora.generate import GenerateRequest, Generator, generate_to_store
    from negalora.models.loader import load_model

    rnd = random.Random(seed)
    store = Store(home)
    generator = Generator(load_model("demo", home, choose_placement("cpu")))
    say("ready")
    n = 0
    while True:
        n += 1
        request = GenerateRequest(prompts=("a red circle on a blue background",), steps=3, seed=seed * 1000 + n)
        say("begin", op="add")
        for stored, _recipe in generate_to_store(generator, store, request):
            say("ok", op="add", id=stored.id)
        rate(store, rnd)


def train(home: Home, seed: int) -> None:
    from negalora.device import choose_placement
    from negalora.models.loader import load_model
    from negalora.train.config import preset
    from negalora.train.trainer import Trainer

    store = Store(home)
    model = load_model("demo", home, choose_placement("cpu"))
    config = preset("cpu-demo", steps=24, batch=1, checkpoint_every=3, keep_last=2, validation_steps=1, seed=seed)
    say("ready")
    result = Trainer(home, store, model).start(config)
    say("ok", op="train", run=result.run_id, status=result.status)


def export(home: Home, run_id: str, out: str) -> None:
    from negalora.export import ExportRequest, export_lora

    store = Store(home)
    say("ready")
    result = export_lora(store, ExportRequest(run_id, "kohya", out=out, verify=False))
    say("ok", op="export", path=result.path)


if __name__ == "__main__":
    mode, root = sys.argv[1], Path(sys.argv[2])
    if mode == "export":
        export(Home(root), sys.argv[3], sys.argv[4])
    else:
        {"store": store_loop, "generate": generate_loop, "train": train}[mode](Home(root), int(sys.argv[3]))
