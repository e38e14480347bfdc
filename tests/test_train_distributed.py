"""The trainer under a multi-process launcher (torchrun / `accelerate launch`), two CPU processes on
gloo: one run, one row per step, checkpoints written once, gradients averaged across processes."""

import json
import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from test_train import _seed_rejects

from negalora.store import Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(home, *extra, procs=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEGALORA_HOME": str(home.root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", f"--master_port={_free_port()}"]
    cmd += [
        "-m",
        "negalora",
        "train",
        "--preset",
        "cpu-demo",
        "--steps",
        "4",
        "--checkpoint-every",
        "2",
        "--batch",
        "1",
    ]
    cmd += ["--validation-steps", "0", "--device", "cpu", "--json", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("extra", [(), ("--train-text-encoder", "--grad-accum", "2")], ids=["unet", "text-encoder"])
def test_two_processes_train_one_run(home, extra):
    _seed_rejects(home, 6).close()
    r = _launch(home, *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)  # only the main process prints
    store = Store(home)
    runs = store.runs()
    assert [x["id"] for x in runs] == [report["run"]] and runs[0]["status"] == "done"
    assert [s for s, _ in store.losses(report["run"])] == [1, 2, 3, 4]
    assert [c["step"] for c in store.checkpoints(report["run"])] == [2, 4]
    lora = load_file(report["checkpoints"][-1])
    assert any(k.startswith("unet.") for k in lora)
    if extra:
        assert any(k.startswith("text_encoder_2.") for k in lora)
    log = (home.runs / report["run"] / "log.txt").read_text()
    assert ", 2 processes" in log
    assert log.count("checkpoint step 4") == 1  # written by one process, not two
