"""The app's side of the worker: start it, send jobs, receive events on a reader thread.

Jobs not yet started are remembered; when the worker dies, ``restart()`` sends them again to a new
worker. The job that was running is reported as failed with the reason.
"""

import itertools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from negalora.worker.protocol import decode, encode, job_message


class WorkerClient:
    def __init__(self, home: Path, on_event: Callable[[dict], None], device: str | None = None):
        self.home = Path(home)
        self.device = device
        self.on_event = on_event
        self.proc: subprocess.Popen | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[str, dict] = {}  # sent, not yet taken by the worker
        self._running: tuple[str, subprocess.Popen] | None = None  # the job a worker process has taken
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start a worker unless one is alive (a second one would run the same jobs again)."""
        if self.alive:
            return
        cmd = [sys.executable, "-m", "negalora.worker", "--home", str(self.home)]
        if self.device:
            cmd += ["--device", self.device]
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        self._stopping = False
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True, name="worker-reader").start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def restart(self) -> None:
        """Start a new worker and send it every job that had not been taken; nothing if one is alive."""
        if self.alive:
            return
        self.start()
        with self._lock:
            pending = list(self._pending.values())
        for job in pending:
            self._send(job)

    def fail_pending(self, reason: str) -> None:
        """Give up on every job not yet taken (e.g. the worker keeps dying): each is reported failed."""
        with self._lock:
            pending, self._pending = list(self._pending), {}
        for job in pending:
            self.on_event({"type": "failed", "job": job, "kind": "crash", "error": reason})

    def stop(self, timeout: float = 5.0) -> None:
        if not self.proc:
            return
        self._stopping = True
        try:
            self._send({"type": "shutdown"})
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """Kill the worker abruptly (what a crash looks like); for tests and a stuck worker."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, model: str, request) -> str:
        """Send a request of ``negalora.api`` to run on ``model``; returns the job's id."""
        job_id = f"j{next(self._ids)}"
        msg = job_message(job_id, model, request)
        with self._lock:
            self._pending[job_id] = msg
        self._send(msg)
        return job_id

    def cancel(self, job_id: str) -> None:
        """The worker reports the outcome; only a job no worker can receive is ended here."""
        if self.alive:
            self._send({"type": "cancel", "job": job_id})
            return
        with self._lock:
            queued = self._pending.pop(job_id, None)
        if queued is not None:
            self.on_event({"type": "finished", "job": job_id, "status": "cancelled", "image_ids": []})

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._running is not None or bool(self._pending)

    def _send(self, msg: dict) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None or proc.stdin is None:
            return  # delivered on restart
        try:
            proc.stdin.write(encode(msg))
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the reader thread reports the death

    # -- events ---------------------------------------------------------------------------

    def _read(self, proc: subprocess.Popen) -> None:
        if proc.stdout is None:
            return
        for line in proc.stdout:
            try:
                msg = decode(line)
            except ValueError:
                continue
            job = msg.get("job") or ""  # "": a message of no job (no job id is empty)
            with self._lock:
                if msg["type"] == "accepted":
                    self._pending.pop(job, None)
                    self._running = (job, proc)
                elif msg["type"] in ("finished", "failed"):
                    self._pending.pop(job, None)
                    if self._running and self._running[0] == job:
                        self._running = None
            if msg["type"] != "accepted":
                self.on_event(msg)
        code = proc.wait()
        with self._lock:
            lost = None
            if self._running and self._running[1] is proc:  # this process died holding a job
                lost, self._running = self._running[0], None
        if lost is not None:
            self.on_event(
                {"type": "failed", "job": lost, "kind": "crash", "error": f"the worker stopped (exit code {code})"}
            )
        if proc is self.proc:
            self.on_event({"type": "exited", "code": code, "expected": self._stopping})
