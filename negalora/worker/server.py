"""The worker's side: read jobs from stdin, run them one at a time, write events to stdout."""

import argparse
import os
import queue
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from negalora import api
from negalora.cancel import CancelToken
from negalora.errors import NegaloraError
from negalora.worker.protocol import Writer, decode, request_of

if TYPE_CHECKING:
    from negalora.generate import Generator


class WorkerServer:
    def __init__(self, home_dir: str, device: str | None, out: Writer):
        from negalora.home import Home

        self.home = Home(Path(os.path.abspath(home_dir)))
        self.device = device
        self.out = out
        self.jobs: queue.Queue = queue.Queue()
        self.cancelled: set[str] = set()
        self.current: tuple[str, CancelToken] | None = None
        self.lock = threading.Lock()
        self._model_key = None
        self._generator = None
        self._store = None

    # -- input ----------------------------------------------------------------------------

    def read_commands(self, stream) -> None:
        for line in stream:
            if not line.strip():
                continue
            try:
                msg = decode(line)
            except ValueError:
                msg = None
            if not isinstance(msg, dict) or ("job" not in msg and msg.get("type") in ("job", "cancel")):
                print(f"negalora worker: ignored a malformed message: {line[:200]!r}", file=sys.stderr)
                continue
            kind = msg.get("type")
            if kind == "job":
                self.jobs.put(msg)
            elif kind == "cancel":
                with self.lock:
                    self.cancelled.add(msg["job"])
                    if self.current and self.current[0] == msg["job"]:
                        self.current[1].cancel()
            elif kind == "shutdown":
                break
        self.jobs.put(None)  # stdin closed or shutdown: finish

    # -- jobs -----------------------------------------------------------------------------

    def _generator_for(self, spec: str) -> "Generator":
        from negalora.device import choose_placement
        from negalora.generate import Generator
        from negalora.hashing import HashCache
        from negalora.models.loader import load_model

        key = (spec, self.device)
        if self._model_key != key or self._generator is None:
            self._generator = self._model_key = None  # free the old pipeline; a failed load leaves none
            model = load_model(spec, self.home, choose_placement(self.device))
            self._generator = Generator(model, HashCache(self.home.cache / "hashes.json"))
            self._model_key = key
            self.out.send(
                {
                    "type": "model",
                    "name": model.name,
                    "location": model.location,
                    "device": model.placement.label,
                    "native_size": model.native_size,
                }
            )
        return self._generator

    def _store_handle(self):
        from negalora.store import Store

        if self._store is None:
            self._store = Store(self.home)
        return self._store

    def run_job(self, msg: dict) -> None:
        from negalora.generate import generate_to_store

        job = msg["job"]
        token = CancelToken()
        with self.lock:
            if job in self.cancelled:
                self.out.send({"type": "finished", "job": job, "status": "cancelled", "image_ids": []})
                return
            self.current = (job, token)
        # Taken off the queue: from here a crash of this process is this job's failure.
        self.out.send({"type": "accepted", "job": job})
        try:
            wanted = request_of(msg)  # a malformed request fails as bad input, before any model loads
            generator = self._generator_for(msg.get("model") or "demo")
            store = self._store_handle()
            if isinstance(wanted, api.TrainRequest):
                generator.release_lora()  # train on the base model, not on the last LoRA used to generate
                self._train(job, wanted, generator.model, store, token)
                return
            if isinstance(wanted, api.ExportRequest):
                self._export(job, wanted, generator, store, token)
                return
            if isinstance(wanted, api.CompareRequest):
                self._compare(job, wanted, generator, store, token)
                return
            from negalora.generate import with_init_image

            requests = [with_init_image(store, r) for r in wanted.requests]  # an init file is stored first
            total = sum(len(generator.plan(r)) for r in requests)  # all checks before the first image
            self.out.send({"type": "started", "job": job, "total": total})
            ids: list[int] = []

            def progress(p):
                self.out.send(
                    {
                        "type": "progress",
                        "job": job,
                        "image_index": p.image_index,
                        "image_total": total,
                        "step": p.step,
                        "steps": p.steps,
                        "batch": p.batch,
                    }
                )

            def image(stored, recipe):
                ids.append(stored.id)
                if wanted.reject and not stored.duplicate:  # keep the artist's verdict on old images
                    store.rate([stored.id], "reject", list(wanted.reasons))
                self.out.send(
                    {
                        "type": "image",
                        "job": job,
                        "image_id": stored.id,
                        "path": str(stored.path),
                        "seed": recipe.seed,
                        "prompt": recipe.prompt,
                        "duplicate": stored.duplicate,
                        "batch_size": recipe.batch_size,
                    }
                )

            if requests:  # one call: consecutive images that share their settings render in batches
                generate_to_store(generator, store, requests, on_progress=progress, cancel=token, on_image=image)
            status = "cancelled" if token.cancelled else "done"
            self.out.send({"type": "finished", "job": job, "status": status, "image_ids": ids})
        except NegaloraError as exc:
            self.out.send({"type": "failed", "job": job, "kind": "bad_input", "error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            kind = "out_of_memory" if "out of memory" in str(exc).lower() else "crash"
            error = f"{type(exc).__name__}: {exc}"
            if kind == "out_of_memory":
                _free_gpu_memory()
                error = f"out of memory: lower the batch size or the image size ({exc})"
            traceback.print_exc(file=sys.stderr)
            self.out.send({"type": "failed", "job": job, "kind": kind, "error": error})
        finally:
            with self.lock:
                self.current = None

    def _train(self, job: str, request: api.TrainRequest, model, store, token: CancelToken) -> None:
        """A training run (new, or resumed with ``resume``); every trainer event goes to the app."""
        from negalora.train.trainer import Trainer

        def relay(event: dict) -> None:
            self.out.send({**event, "job": job})

        trainer = Trainer(self.home, store, model, on_event=relay, cancel=token)
        self.out.send({"type": "started", "job": job, "total": 0})
        if request.resume:
            result = trainer.resume(request.resume)
        else:
            result = trainer.start(request.config)
        status = {"done": "done", "cancelled": "cancelled"}.get(result.status)
        if status:
            self.out.send({"type": "finished", "job": job, "status": status, "image_ids": [], "run": result.run_id})
        else:
            self.out.send(
                {"type": "failed", "job": job, "kind": "training", "error": result.message, "run": result.run_id}
            )

    def _compare(self, job: str, request: api.CompareRequest, generator, store, token: CancelToken) -> None:
        """A comparison grid: the planned layout first, then every cell as it is stored."""
        from negalora.compare.runner import run_comparison

        ids: list[int] = []
        planned_id: list[int] = []

        def planned(result) -> None:
            planned_id.append(result.id)
            self.out.send({"type": "started", "job": job, "total": len(result.rows) * len(result.columns)})
            self.out.send(
                {
                    "type": "comparison",
                    "job": job,
                    "comparison": result.id,
                    "columns": [c.to_dict() for c in result.columns],
                    "rows": [{"prompt": p, "seed": s} for p, s in result.rows],
                }
            )

        def progress(p) -> None:
            self.out.send(
                {
                    "type": "progress",
                    "job": job,
                    "image_index": p.cell_index,
                    "image_total": p.cell_total,
                    "step": p.step,
                    "steps": p.steps,
                    "batch": p.batch,
                }
            )

        def cell(row: int, col: int, stored) -> None:
            ids.append(stored.id)
            self.out.send(
                {
                    "type": "cell",
                    "job": job,
                    "comparison": planned_id[0],
                    "row": row,
                    "col": col,
                    "image_id": stored.id,
                    "path": str(stored.path),
                }
            )

        try:
            result = run_comparison(
                generator, store, request, on_progress=progress, cancel=token, on_cell=cell, on_planned=planned
            )
        except NegaloraError as exc:
            failed = {"type": "failed", "job": job, "kind": "bad_input", "error": str(exc)}
            self.out.send({**failed, "comparison": planned_id[0]} if planned_id else failed)
            return
        self.out.send(
            {
                "type": "finished",
                "job": job,
                "status": result.status,
                "image_ids": ids,
                "comparison": result.id,
                "grid": str(result.grid_path or ""),
            }
        )

    def _export(self, job: str, request: api.ExportRequest, generator, store, token: CancelToken) -> None:
        """Export a run's LoRA, verified on this worker's model (the run's base model); the result
        rides on the finished event."""
        from negalora.errors import Cancelled
        from negalora.export import export_lora

        self.out.send({"type": "started", "job": job, "total": 0})
        try:
            result = export_lora(
                store,
                request,
                generator,
                on_event=lambda e: self.out.send({**e, "job": job}),
                cancel=token,
            )
        except Cancelled:
            self.out.send({"type": "finished", "job": job, "status": "cancelled", "image_ids": []})
            return
        self.out.send({"type": "finished", "job": job, "status": "done", "image_ids": [], "export": result.to_dict()})

    def serve(self) -> None:
        self.out.send({"type": "ready", "pid": os.getpid()})
        while (msg := self.jobs.get()) is not None:
            self.run_job(msg)


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m negalora.worker", description="negalora's generation worker")
    parser.add_argument("--home", required=True)
    parser.add_argument("--device")
    args = parser.parse_args(argv)
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from negalora.models.quiet import quiet_libraries

    quiet_libraries()
    server = WorkerServer(args.home, args.device, Writer(proto))
    reader = threading.Thread(target=server.read_commands, args=(sys.stdin.buffer,), daemon=True)
    reader.start()
    server.serve()
    return 0
