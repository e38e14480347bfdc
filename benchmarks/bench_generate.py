"""Images per second of ``negalora generate --count N`` at batch size 1 and at auto, and negalora
against a direct diffusers ``pipe(...)`` call at the same batch size, all in one run.

Same demo model, prompt, negative, steps, guidance, size and seeds. negalora's side is the whole
product path: Compel conditioning, the denoising loop with progress and cancel checks, PNG metadata,
the atomic content-addressed write and the database rows. The direct side is one pipeline call per
batch, nothing stored. Runs are interleaved so machine noise hits every side alike.

Targets: auto >= 5x the images per second of batch size 1; negalora's time per image at most 5% over
the direct call's at equal batch size (batch 1 and auto).

    python benchmarks/bench_generate.py [--count 64] [--steps 25] [--repeat 8] [--json]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from negalora.cancel import CancelToken  # noqa: E402
from negalora.device import choose_placement  # noqa: E402
from negalora.generate import GenerateRequest, Generator, generate_to_store  # noqa: E402
from negalora.home import Home  # noqa: E402
from negalora.models.loader import load_model  # noqa: E402
from negalora.store import Store  # noqa: E402

OVERHEAD_TARGET = 1.05
SPEEDUP_TARGET = 5.0
PROMPT = "a (red)++ circle on a blue background"
DIRECT_PROMPT = "a red circle on a blue background"  # Compel's weights are negalora's; the cost is the same
NEGATIVE = "wrong"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64, help="images per generate call (default 64)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument(
        "--repeat", type=int, default=8, help="runs of each auto side, half as many at batch 1; the fastest counts"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp))
        model = load_model("demo", home, choose_placement(args.device))
        generator = Generator(model)
        store = Store(home)
        pipe = model.pipe
        size = model.native_size
        seed = iter(range(10_000, 10**9, 1000))  # fresh seeds: no run is a duplicate of an earlier one
        auto = generator.batch_size_for(generator.plan(GenerateRequest(prompts=(PROMPT,), steps=1))[0], None)

        def ours(count: int, batch: int | None) -> None:
            request = GenerateRequest(
                prompts=(PROMPT,), negative=NEGATIVE, count=count, seed=next(seed), steps=args.steps, batch_size=batch
            )
            generate_to_store(generator, store, request, on_progress=lambda p: None, cancel=CancelToken())

        def direct(count: int, batch: int) -> None:
            pipe.scheduler = generator._scheduler("Euler")
            first = next(seed)
            for start in range(0, count, batch):
                n = min(batch, count - start)
                pipe(
                    prompt=DIRECT_PROMPT,
                    negative_prompt=NEGATIVE,
                    num_images_per_prompt=n,
                    num_inference_steps=args.steps,
                    guidance_scale=7.0,
                    width=size,
                    height=size,
                    generator=[torch.Generator("cpu").manual_seed(first + start + k) for k in range(n)],
                    output_type="np",
                )

        cases = {
            "negalora batch 1": lambda: ours(args.count, 1),
            "negalora auto": lambda: ours(args.count, None),
            "direct batch 1": lambda: direct(args.count, 1),
            "direct auto": lambda: direct(args.count, auto),
        }
        ours(auto, None)  # warm-up: first-call costs are not per-image costs
        direct(auto, auto)
        times: dict[str, list[float]] = {k: [] for k in cases}
        for i in range(args.repeat):
            order = list(cases.items())
            if i % 2:
                order.reverse()
            for name, fn in order:
                if name.endswith("batch 1") and i >= max(2, args.repeat // 2):
                    continue  # the slow sides vary less, relative to their length: fewer runs
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        store.close()

    # the fastest of the repeats: the run the machine disturbed least (2 shared cores vary by 15%)
    med = {k: min(v) for k, v in times.items()}
    ips = {k: args.count / v for k, v in med.items()}
    speedup = ips["negalora auto"] / ips["negalora batch 1"]
    overhead = {
        "batch 1": med["negalora batch 1"] / med["direct batch 1"],
        "auto": med["negalora auto"] / med["direct auto"],
    }
    ok = speedup >= SPEEDUP_TARGET and all(r <= OVERHEAD_TARGET for r in overhead.values())
    result = {
        "device": model.placement.label,
        "count": args.count,
        "steps": args.steps,
        "size": size,
        "auto_batch_size": auto,
        "images_per_s": {k: round(v, 2) for k, v in ips.items()},
        "auto_speedup": round(speedup, 2),
        "overhead_ratio": {k: round(v, 3) for k, v in overhead.items()},
        "targets": {"auto_speedup": SPEEDUP_TARGET, "overhead_ratio": OVERHEAD_TARGET},
        "ok": ok,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['device']}, {args.count} images of {size}x{size} at {args.steps} steps, auto batch {auto}")
        for k, v in ips.items():
            print(f"  {k:<18} {v:7.2f} images/s")
        print(f"auto vs batch 1: {speedup:.2f}x (target >= {SPEEDUP_TARGET})")
        for k, v in overhead.items():
            print(f"negalora / direct at {k}: {v:.3f} (target <= {OVERHEAD_TARGET})")
        print("OK" if ok else "MISSED A TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
