"""A comparison grid on one loaded pipeline: model loads, LoRA loads, and seconds per cell.

Runs `negalora compare` in-process (the CLI's whole path: model load, planning, rendering every
cell, storing it, writing the grid) on the demo model with a LoRA, counting model loads and LoRA
loads, then times a direct diffusers ``pipe(...)`` with the LoRA loaded for the same size and steps.
Targets: one model load for the whole grid, at most one LoRA load per LoRA column, and seconds per
cell within 15% of a direct call (the cell also pays Compel, the PNG, the store and the grid).

    python benchmarks/bench_compare.py [--prompts 2] [--seeds 4] [--steps 25] [--json]
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import negalora.models.loader as loader  # noqa: E402
from negalora.cli import main as cli_main  # noqa: E402
from negalora.device import choose_placement  # noqa: E402

TARGET_RATIO = 1.15
PROMPTS = ("a red circle on a blue background", "a green triangle on a white background", "a cat", "a house")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from diffusers import StableDiffusionXLPipeline
    from helpers_lora import write_demo_lora

    model_loads, lora_loads = [], []
    real_load_model = loader.load_model
    real_load_lora = StableDiffusionXLPipeline.load_lora_weights

    def counting_load_model(*a, **k):
        model_loads.append(a[0])
        return real_load_model(*a, **k)

    def counting_load_lora(self, *a, **k):
        lora_loads.append(a[0])
        return real_load_lora(self, *a, **k)

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        warm = real_load_model("demo", loader.Home(home), choose_placement("cpu"))
        lora = write_demo_lora(warm.pipe, Path(tmp) / "wrong.safetensors")
        prompts = PROMPTS[: args.prompts]
        argv = ["compare", *prompts, "--lora", str(lora), "--count", str(args.seeds), "--steps", str(args.steps)]
        argv += ["--home", str(home), "--device", "cpu", "--json"]
        size = warm.native_size
        direct: list[float] = []

        def time_direct(n: int) -> None:
            # A direct diffusers call with the LoRA loaded, same size and steps: the per-image yardstick.
            warm.pipe.load_lora_weights(str(lora), adapter_name="bench")
            for i in range(n):
                t1 = time.perf_counter()
                warm.pipe(
                    prompt=prompts[0],
                    negative_prompt="wrong",
                    num_inference_steps=args.steps,
                    guidance_scale=7.0,
                    width=size,
                    height=size,
                    generator=torch.Generator("cpu").manual_seed(i),
                )
                direct.append(time.perf_counter() - t1)
            warm.pipe.unload_lora_weights()

        time_direct(4)  # before and after the command, so machine noise hits both sides alike
        loader.load_model = counting_load_model
        StableDiffusionXLPipeline.load_lora_weights = counting_load_lora
        out = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out):
            code = cli_main(argv)
        total = time.perf_counter() - t0
        loader.load_model = real_load_model
        StableDiffusionXLPipeline.load_lora_weights = real_load_lora
        if code != 0:
            print(f"negalora compare failed with exit code {code}", file=sys.stderr)
            return 1
        time_direct(4)
        direct_s = statistics.median(direct[1:])
        result = json.loads(out.getvalue())
        cells = len(result["cells"])
        lora_columns = sum(1 for c in result["columns"] if c["lora_path"])

    per_cell = total / cells
    ratio = per_cell / direct_s
    report = {
        "cells": cells,
        "columns": [c["label"] for c in result["columns"]],
        "model_loads": len(model_loads),
        "lora_loads": len(lora_loads),
        "lora_columns": lora_columns,
        "seconds_total": round(total, 2),
        "seconds_per_cell": round(per_cell, 4),
        "direct_seconds_per_image": round(direct_s, 4),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
    }
    ok = len(model_loads) == 1 and len(lora_loads) <= lora_columns and ratio <= TARGET_RATIO
    if args.json:
        print(json.dumps({**report, "ok": ok}, indent=2))
    else:
        print(f"grid: {cells} cells ({args.prompts} prompts x {args.seeds} seeds x {len(result['columns'])} columns)")
        print(f"model loads: {len(model_loads)}   LoRA loads: {len(lora_loads)} (LoRA columns: {lora_columns})")
        print(f"whole command: {total:.2f} s   per cell: {per_cell:.3f} s   direct pipe(): {direct_s:.3f} s/image")
        print(f"ratio per cell / direct: {ratio:.3f} (target <= {TARGET_RATIO})  {'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
