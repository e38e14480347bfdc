"""Time per image through negalora against a direct diffusers ``pipe(...)`` call.

Same demo model, prompt, negative, steps, guidance, size and seeds, measured in one run with the
two interleaved so that machine noise hits both alike. negalora's side is the whole product path:
Compel conditioning, the denoising loop with progress and cancel checks, PNG metadata, the atomic
content-addressed write and the database rows. Target: overhead <= 5%.

    python benchmarks/bench_generate.py [--images 12] [--steps 25] [--json]
"""

import argparse
import json
import os
import statistics
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

TARGET = 1.05
PROMPT = "a (red)++ circle on a blue background"
NEGATIVE = "wrong"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12, help="images per side (default 12)")
    parser.add_argument("--steps", type=int, default=25)
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

        def ours(seed: int) -> None:
            request = GenerateRequest(prompts=(PROMPT,), negative=NEGATIVE, seed=seed, steps=args.steps)
            generate_to_store(generator, store, request, on_progress=lambda p: None, cancel=CancelToken())

        def direct(seed: int) -> None:
            pipe.scheduler = generator._scheduler("Euler")
            pipe(
                prompt=PROMPT,
                negative_prompt=NEGATIVE,
                num_inference_steps=args.steps,
                guidance_scale=7.0,
                width=size,
                height=size,
                generator=torch.Generator("cpu").manual_seed(seed),
            ).images[0]

        for fn in (ours, direct):  # warm-up: first-call costs are not per-image costs
            fn(0)
        times = {"negalora": [], "direct": []}
        for i in range(args.images):
            order = [("negalora", ours), ("direct", direct)]
            if i % 2:
                order.reverse()
            for name, fn in order:
                t0 = time.perf_counter()
                fn(1000 + i)
                times[name].append(time.perf_counter() - t0)
        store.close()

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["negalora"] / med["direct"]
    result = {
        "device": model.placement.label,
        "images": args.images,
        "steps": args.steps,
        "size": size,
        "median_s_per_image": med,
        "ratio": ratio,
        "target": TARGET,
        "ok": ratio <= TARGET,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['device']}, {args.images} images of {size}x{size} at {args.steps} steps\n"
            f"direct pipe(): {med['direct'] * 1000:.1f} ms/image\n"
            f"negalora:      {med['negalora'] * 1000:.1f} ms/image\n"
            f"ratio {ratio:.3f} (target <= {TARGET}) {'OK' if result['ok'] else 'OVER TARGET'}"
        )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
