"""The bridge between the worker process and the window: Qt signals on the UI thread, job states,
and an automatic restart when the worker dies (queued jobs are sent to the new one). A worker that
dies again and again is not restarted forever: after MAX_RESTARTS within RESTART_WINDOW seconds the
queued jobs are failed and the user is told."""

import time

from PySide6.QtCore import QObject, Signal

from negalora import api
from negalora.train.config import TrainConfig
from negalora.worker.client import WorkerClient

STATES = ("stopped", "starting", "idle", "busy", "restarting", "failed")
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0


class JobController(QObject):
    job_event = Signal(dict)  # every worker event, delivered on the UI thread
    state_changed = Signal(str)
    message = Signal(str)  # something the user should read
    model_loaded = Signal(dict)
    _incoming = Signal(dict)

    def __init__(self, home, device: str | None = None, parent=None):
        super().__init__(parent)
        self._incoming.connect(self._on_event)  # queued: emitted from the reader thread
        self.client = WorkerClient(home, self._incoming.emit, device)
        self.state = "stopped"
        self.current_job: str | None = None
        self.restarts = 0
        self._restart_times: list[float] = []

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)

    def start(self) -> None:
        if not self.client.alive:
            self._set_state("starting")
            self._restart_times.clear()  # the user asked again: a fresh budget of restarts
            self.client.start()

    def submit_generate(self, model: str, requests, reject: bool = False, reasons=()) -> str:
        self.start()
        return self.client.submit(model, api.GenerateJob(tuple(requests), reject, tuple(reasons)))

    def submit_train(self, model: str, config: dict | None = None, resume: str | None = None) -> str:
        self.start()
        return self.client.submit(model, api.TrainRequest(api.from_wire(TrainConfig, config or {}), resume))

    def submit_compare(self, model: str, compare: dict) -> str:
        """``compare`` is an api.CompareRequest as a dict (as the pages build it)."""
        self.start()
        return self.client.submit(model, api.from_wire(api.CompareRequest, compare))

    def submit_export(self, model: str, export: dict) -> str:
        """``export`` is an api.ExportRequest as a dict; ``model`` the run's base model."""
        self.start()
        return self.client.submit(model, api.from_wire(api.ExportRequest, export))

    def load_model(self, model: str) -> str:
        """Load a model ahead of the first job, so the status bar can show it."""
        self.start()
        return self.client.submit(model, api.GenerateJob())

    def cancel(self, job: str) -> None:
        self.client.cancel(job)

    def shutdown(self) -> None:
        if self.current_job is not None:
            self.client.cancel(self.current_job)  # stops within a step, so closing is quick
        self.client.stop()
        self._set_state("stopped")

    def _on_event(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "ready":
            self._set_state("busy" if self.client.busy else "idle")
        elif kind == "model":
            self.model_loaded.emit(msg)
        elif kind == "started":
            self.current_job = msg["job"]
            self._set_state("busy")
        elif kind in ("finished", "failed"):
            if self.current_job == msg.get("job"):
                self.current_job = None
            if kind == "failed":
                self.message.emit(f"Job failed: {msg['error']}")
            self._set_state("busy" if self.client.busy else "idle")
        elif kind == "exited":
            if msg.get("expected"):
                self._set_state("stopped")
            else:
                now = time.monotonic()
                self._restart_times = [t for t in self._restart_times if now - t < RESTART_WINDOW] + [now]
                if len(self._restart_times) > MAX_RESTARTS:
                    self.client.fail_pending(f"the worker stopped {MAX_RESTARTS + 1} times in a row")
                    self.message.emit(
                        f"The worker keeps stopping (exit code {msg['code']}); it was not restarted. "
                        "Your ratings and finished images are safe. Check the model and try again."
                    )
                    self._set_state("failed")
                else:
                    self.restarts += 1
                    self.message.emit(
                        f"The worker stopped unexpectedly (exit code {msg['code']}); restarting it. "
                        "Your ratings and finished images are safe."
                    )
                    self._set_state("restarting")
                    self.client.restart()
        self.job_event.emit(msg)
