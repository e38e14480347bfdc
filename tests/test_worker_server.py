"""The worker's job loop in-process (no subprocess): events, model switching, bad input."""

import json

from negalora.api import GenerateJob, GenerateRequest
from negalora.worker.protocol import job_message
from negalora.worker.server import WorkerServer


class _Collect:
    def __init__(self):
        self.messages = []

    def send(self, message):
        self.messages.append(message)


def _job(job, model, reject=False, **kw):
    req = GenerateRequest(prompts=("a red circle",), steps=2, seed=1, **kw)
    return job_message(job, model, GenerateJob((req,), reject=reject))


def test_a_bad_model_does_not_break_the_next_job(home, tmp_path):
    out = _Collect()
    server = WorkerServer(str(home.root), "cpu", out)
    server.run_job(_job("j1", "demo"))
    server.run_job(_job("j2", str(tmp_path / "missing-model")))
    server.run_job(_job("j3", "demo", count=1))
    ends = {m["job"]: m for m in out.messages if m["type"] in ("finished", "failed")}
    assert ends["j1"]["status"] == "done"
    assert ends["j2"]["type"] == "failed" and ends["j2"]["kind"] == "bad_input" and "no such" in ends["j2"]["error"]
    assert ends["j3"]["type"] == "finished" and ends["j3"]["status"] == "done"
    kinds = [m["type"] for m in out.messages if m.get("job") == "j1"]
    assert kinds[0] == "accepted" and kinds[1] == "started" and kinds[-1] == "finished"
    assert "image" in kinds and "progress" in kinds


def test_rejecting_job_keeps_the_verdict_of_images_already_in_the_store(home):
    from negalora.store import Store

    out = _Collect()
    server = WorkerServer(str(home.root), "cpu", out)
    server.run_job(_job("j1", "demo", reject=True))
    image_id = next(m["image_id"] for m in out.messages if m["type"] == "image")
    store = Store(home)
    store.rate([image_id], "pick")  # the artist prunes the set
    server.run_job(_job("j2", "demo", reject=True))  # the same recipe again
    again = next(m for m in out.messages if m["type"] == "image" and m["job"] == "j2")
    assert again["image_id"] == image_id and again["duplicate"]
    assert store.image(image_id)["verdict"] == "pick"
    store.close()


def test_malformed_lines_are_ignored_and_the_worker_keeps_reading(home):
    import io

    out = _Collect()
    server = WorkerServer(str(home.root), "cpu", out)
    lines = [b"not json\n", b"[1, 2]\n", b'{"type": "cancel"}\n', b'{"type": "job", "kind": "generate"}\n']
    good = (json.dumps(_job("j9", "demo")) + "\n").encode()
    server.read_commands(io.BytesIO(b"".join([*lines, good])))
    queued = []
    while (msg := server.jobs.get()) is not None:
        queued.append(msg)
    assert [m["job"] for m in queued] == ["j9"]  # only the whole job; the reader got to the end
    bad = {"type": "job", "job": "j10", "model": "demo", "kind": "generate", "request": {"requests": "x"}}
    server.run_job(bad)
    assert out.messages[-1]["type"] == "failed" and out.messages[-1]["kind"] == "bad_input"
