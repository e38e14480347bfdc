"""JSON-lines messages between the app and the worker. The requests and their wire format are
``negalora.api``'s (torch-free); this module frames them.

To the worker:   {"type": "job", "job": ID, "model": SPEC, "kind": generate | compare | train | export,
                 "request": <the request, api.to_wire>}, {"type": "cancel", "job": ID}, {"type": "shutdown"}
From the worker: ready, model, accepted, started, progress, image, finished (status done | cancelled),
                 failed (error, kind: bad_input | out_of_memory | crash | training); training relays the
                 trainer's events (preflight, caching, train_step, checkpoint, validation, ...); compare
                 adds comparison (the layout) and cell; export adds export_stage
"""

import json
import threading
from typing import IO

from negalora.api import job_message, request_of

__all__ = ["Writer", "decode", "encode", "job_message", "request_of"]


def encode(message: dict) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")


def decode(line: bytes | str) -> dict:
    return json.loads(line)


class Writer:
    """Writes whole messages to a binary stream from any thread."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: dict) -> None:
        with self._lock:
            self._stream.write(encode(message))
            self._stream.flush()
