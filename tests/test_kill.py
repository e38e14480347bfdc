"""SIGKILL at random moments, as SQLite tests its own crash safety: generate + rate (in-process
writers and the CLI), training and export. After every kill the home must be whole:
integrity_check ok, every confirmed rating present, no zero-byte or half-written image or LoRA
file, no row pointing at a missing file, and training resumes.

NEGALORA_KILL_TRIALS scales the cheap store trials up for a soak run (default 45).
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

from negalora.hashing import sha256_file
from negalora.home import Home
from negalora.store import Store
from negalora.store.health import check_file
from negalora.store.reconcile import reconcile

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "helpers_kill_child.py"
STORE_TRIALS = int(os.environ.get("NEGALORA_KILL_TRIALS", "45"))


class Ledger:
    """What the killed writer confirmed, and the one change it may have been making."""

    def __init__(self, verdicts: dict[int, str | None], new_images: bool = False):
        self.new_images = new_images  # images the writer did not report (a CLI run) are expected
        self.verdicts = dict(verdicts)
        self.deleted: set[int] = set()
        self.pending: dict | None = None
        self.confirmed = 0

    def feed(self, line: str) -> None:
        kind, _, payload = line.partition(" ")
        msg = json.loads(payload) if payload.strip() else {}
        if kind == "begin":
            self.pending = msg
        elif kind == "ok":
            self.pending = None
            self.confirmed += 1
            for key, verdict in msg.get("after", {}).items():
                self.verdicts[int(key)] = verdict
            if "id" in msg:
                self.verdicts.setdefault(msg["id"], None)
            for gone in msg.get("deleted", []):
                self.verdicts.pop(gone, None)
                self.deleted.add(gone)

    def check(self, actual: dict[int, str | None]) -> None:
        pending = self.pending or {}
        maybe = {int(k): v for k, v in pending.get("after", {}).items()}
        maybe_gone = set(pending.get("deleted", []))
        for image_id, verdict in self.verdicts.items():
            if image_id in maybe_gone and image_id not in actual:
                continue
            assert image_id in actual, f"image {image_id} was confirmed and is gone"
            allowed = {verdict} | ({maybe[image_id]} if image_id in maybe else set())
            assert actual[image_id] in allowed, f"image {image_id}: {actual[image_id]!r}, confirmed {verdict!r}"
        for image_id in self.deleted:
            assert image_id not in actual, f"image {image_id} was deleted and is back"
        new = set(actual) - set(self.verdicts)
        if new and not self.new_images:  # only the image being added when the kill came
            assert len(new) == 1 and pending.get("op") in ("add", "import"), new
        assert all(actual[i] is None for i in new)


def _kill_after(cmd: list[str], delay: float, ready=None, feed=None, env: dict | None = None) -> bool:
    """Start ``cmd``; wait until it is ready (a stdout line starting with ``ready``, or a callable
    that returns True), then ``delay`` seconds; SIGKILL it. Every stdout line goes to ``feed``.
    Returns whether the kill happened (the process may have finished first)."""
    err_file = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads would fill up and stall the writer
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, env=env)
    started = threading.Event()
    if ready is None:
        started.set()

    def read():
        for line in proc.stdout:
            if isinstance(ready, str) and line.startswith(ready):
                started.set()
            if feed is not None:
                feed(line.rstrip("\n"))
        started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not started.is_set() and time.monotonic() < deadline:
        if callable(ready) and ready():
            started.set()
        started.wait(0.05)
    assert started.is_set(), "the writer never got going"
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(30)
    err_file.seek(0)
    err = err_file.read()
    err_file.close()
    assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
    return killed


def _image_count(home: Home) -> int:
    return sum(1 for p in home.images.rglob("*.png") if not p.name.startswith(".")) if home.images.exists() else 0


def _checkpoint_after(home: Home, step: int):
    return lambda: bool(list(home.runs.glob(f"*/checkpoints/step-{step:06d}.state.safetensors")))


def _verdicts(store) -> dict[int, str | None]:
    return {r["id"]: r["verdict"] for r in store.images()}


_CHECKED: set[tuple[str, int]] = set()  # (path, size) of files already read whole: content-named, so never changed


def _assert_whole(home: Home, ledger: Ledger | None = None) -> dict:
    """The checks after every kill; returns the verdicts now in the database."""
    store = Store(home)  # its health check runs first: a damaged file would raise here
    try:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
        actual = _verdicts(store)
        if ledger is not None:
            ledger.check(actual)
        for row in store.images():  # every row's file is there
            assert Path(row["path"]).is_file(), row["path"]
        for path in home.images.rglob("*"):  # every visible file is a whole image, named by its content
            if path.is_file() and not path.name.startswith("."):
                key = (str(path), path.stat().st_size)
                if key in _CHECKED:
                    continue
                data = path.read_bytes()
                assert data and hashlib.sha256(data).hexdigest() == path.stem, path
                with Image.open(path) as im:
                    im.load()
                _CHECKED.add(key)
        for run in store.runs():
            for ckpt in store.checkpoints(run["id"]):
                assert sha256_file(ckpt["path"]) == ckpt["sha256"], ckpt["path"]
        for backup in home.backups.glob("*.db") if home.backups.exists() else []:  # only whole backups
            assert check_file(backup) is None, backup
        reconcile(store, temp_age=0)  # what the next start does: adopt orphans, drop temps
        files = {str(p) for p in home.images.rglob("*") if p.is_file()}
        assert {r["path"] for r in store.images()} == files
        return _verdicts(store)
    finally:
        store.close()


@pytest.mark.slow
def test_store_writers_killed_at_random_moments_lose_nothing_confirmed(tmp_path):
    home = Home(tmp_path / "home")
    rnd = random.Random(20261201)
    verdicts: dict = {}
    confirmed = kills = 0
    for trial in range(STORE_TRIALS):
        ledger = Ledger(verdicts)
        cmd = [sys.executable, str(CHILD), "store", str(home.root), str(trial + 1)]
        if trial % 3 == 2:  # from the start: amid the health check, a migration or the daily backup
            kills += _kill_after(cmd, rnd.uniform(0.2, 0.6), None, ledger.feed)
        else:
            kills += _kill_after(cmd, rnd.uniform(0.02, 0.4), "ready", ledger.feed)
        verdicts = _assert_whole(home, ledger)
        confirmed += ledger.confirmed
    assert kills == STORE_TRIALS and confirmed > 5 * STORE_TRIALS  # the kills landed amid real work
    print(f"store kills: {kills}, confirmed operations: {confirmed}, images: {len(verdicts)}")


@pytest.mark.slow
def test_generation_and_rating_killed_in_process_and_through_the_cli(tmp_path):
    home = Home(tmp_path / "home")
    rnd = random.Random(7)
    verdicts: dict = {}
    kills = 0
    for trial in range(2):  # the engine in a script: render, store, rate, repeat
        ledger = Ledger(verdicts)
        cmd = [sys.executable, str(CHILD), "generate", str(home.root), str(trial + 1)]
        kills += _kill_after(cmd, rnd.uniform(0.1, 2.0), "ok", ledger.feed)  # after its first image
        verdicts = _assert_whole(home, ledger)
        assert ledger.confirmed >= 1
    # the CLI, killed while it renders a batch (once its first image is in)
    before = len(verdicts)
    cmd = [sys.executable, str(ROOT / "main.py"), "generate", "a green square", "--count", "40", "--steps", "4"]
    cmd += ["--seed", "500", "--home", str(home.root), "--json"]
    kills += _kill_after(cmd, rnd.uniform(0.0, 1.0), lambda: _image_count(home) > before)
    verdicts = _assert_whole(home, Ledger(verdicts, new_images=True))
    assert kills == 3 and len(verdicts) > before


@pytest.fixture
def trained_home(tmp_path):
    from helpers_train import seed_rejects

    home = Home(tmp_path / "home")
    seed_rejects(home, 4)
    return home


def _train_cmd(home: Home, *extra: str) -> list[str]:
    cmd = [sys.executable, str(ROOT / "main.py"), "train", "--preset", "cpu-demo", "--steps", "24", "--batch", "1"]
    cmd += ["--checkpoint-every", "3", "--keep-last", "2", "--validation-steps", "1", "--home", str(home.root)]
    return cmd + ["--json", *extra]


def _assert_run_whole(home: Home) -> str | None:
    _assert_whole(home)
    store = Store(home)
    try:
        runs = store.runs()
        for ckpt in (c for r in runs for c in store.checkpoints(r["id"])):
            with safe_open(ckpt["path"], framework="pt") as fh:  # a LoRA a kill left is whole
                assert list(fh.keys())
        for run in runs:  # no visible file in the run is half-written
            for path in (home.runs / run["id"]).rglob("*"):
                if path.is_file() and not path.name.startswith("."):
                    assert path.stat().st_size > 0, path
        return runs[0]["id"] if runs else None
    finally:
        store.close()


@pytest.mark.slow
def test_training_and_export_killed_at_random_moments_resume_and_stay_whole(trained_home, tmp_path):
    home = trained_home
    rnd = random.Random(11)
    # the trainer called directly in a process of its own, then the CLI resuming it
    train_kills = _kill_after(
        [sys.executable, str(CHILD), "train", str(home.root), "3"], rnd.uniform(0.0, 2.0), _checkpoint_after(home, 3)
    )
    run_id = _assert_run_whole(home)
    store = Store(home)
    reached = store.run(run_id)["steps_done"]
    store.close()
    resume = _train_cmd(home, "--resume", run_id)
    train_kills += _kill_after(resume, rnd.uniform(0.0, 2.0), _checkpoint_after(home, reached + 3))
    _assert_run_whole(home)
    assert train_kills == 2
    done = subprocess.run(_train_cmd(home, "--resume", run_id), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # the kill may have come after the last checkpoint: nothing left to do
        assert "already finished" in done.stderr, done.stderr
    store = Store(home)
    assert store.run(run_id)["steps_done"] == 24
    assert [s for s, _ in store.losses(run_id)] == list(range(1, 25))
    store.close()

    out = tmp_path / "exports" / "wrong.safetensors"
    export_kills = 0
    for k, stall in enumerate((True, False)):
        cmd = [sys.executable, str(ROOT / "main.py"), "export", run_id, "--format", "kohya", "--out", str(out)]
        cmd += ["--step", str(24 - 3 * k), "--home", str(home.root), "--device", "cpu", "--json"]
        if stall:  # export_lora called directly, held mid-write (the temp file open, nothing in it yet)
            cmd = [sys.executable, str(CHILD), "export", str(home.root), run_id, str(out)]
        # then the CLI, killed at a random moment once its temp file is there
        env = {**os.environ, "NEGALORA_FAULTS": "export_write=stall"} if stall else None
        appeared = lambda: any(out.parent.glob(".wrong.safetensors.*"))  # noqa: E731
        export_kills += _kill_after(cmd, rnd.uniform(0.0, 1.5), appeared, env=env)
        _assert_run_whole(home)
        if out.exists():  # either nothing, or a whole file
            with safe_open(str(out), framework="pt") as fh:
                assert fh.metadata()["sshs_model_hash"] == sha256_file(out, skip_safetensors_header=True)
        visible = [p for p in out.parent.iterdir() if not p.name.startswith(".")]  # temps are hidden
        assert all(p.stat().st_size > 0 for p in visible)
    assert export_kills >= 1  # the held one always; the other when it had not finished
    finished = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "export", run_id, "--format", "kohya", "--out", str(out)]
        + ["--home", str(home.root), "--device", "cpu", "--no-verify", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # the killed exports' temps are gone
