"""benchmarks/bench_gpu.py is for the first GPU a session gets; here it runs the same code on the
demo model's shapes on the CPU (--tiny), so it cannot rot before then."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_gpu_runs_at_a_tiny_size_on_the_cpu(capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--repeat", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["size"] == 64 and out["unet_params_m"] > 0
    for n in ("batch 1", "batch 4"):
        g = out["generation"][n]
        assert g["negalora_s_per_image"] > 0 and g["diffusers_s_per_image"] > 0 and g["ratio"] > 0
    assert set(out["training"]) == {"adamw", "adamw + gradient checkpointing"}  # 8-bit AdamW: CUDA only
    assert all(t["s_per_step"] > 0 for t in out["training"].values())
    assert out["peak_host_rss_mb_while_building"] > 0
