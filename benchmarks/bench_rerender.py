"""Re-render through the LoRA on the trained demo model: how many of a session's rejects lose their
defect when re-rendered (img2img) at each strength, without the "wrong" LoRA and with it.

Generates a session, rejects what the detectors flag, trains the LoRA on the rejects with negalora's
trainer, re-renders every reject at strengths 0.3, 0.5 and 0.7 each way (no LoRA; the LoRA on the
negative pass; the LoRA on both passes), and reports the share repaired, new defects, prompt
adherence and how much the picture changed, with 95% intervals. Writes a Markdown report and a grid.

    python benchmarks/bench_rerender.py [--quick] [--report docs/efficacy_rerender.md] [--json]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from negalora.demo_world.rerender import RerenderConfig, report_markdown, run_rerender, sample_grid  # noqa: E402
from negalora.device import choose_placement  # noqa: E402
from negalora.generate import Generator  # noqa: E402
from negalora.home import Home  # noqa: E402
from negalora.models.loader import load_model  # noqa: E402
from negalora.store import Store  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small version (a few minutes)")
    parser.add_argument("--session", type=int, help="session images (default 2000, about 9%% rejected)")
    parser.add_argument("--train-steps", type=int, help="training steps (default 800, batch 4)")
    parser.add_argument("--strengths", type=float, nargs="+", help="denoising strengths (default 0.3 0.5 0.7)")
    parser.add_argument("--guidance", type=float, help="CFG of the session and of every re-render (default 3)")
    parser.add_argument("--scale", type=float, help="LoRA strength (default 1)")
    parser.add_argument("--no-both", action="store_true", help="skip the LoRA-on-both-passes way")
    parser.add_argument("--report", type=Path, help="write the Markdown report here (and the grid beside it)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    cfg = RerenderConfig()
    if args.quick:
        cfg = RerenderConfig(session_images=320, train={**cfg.train, "steps": 400})
    train = dict(cfg.train)
    if args.train_steps is not None:
        train["steps"] = args.train_steps
    cfg = replace(
        cfg,
        session_images=args.session or cfg.session_images,
        train=train,
        strengths=tuple(args.strengths) if args.strengths else cfg.strengths,
        guidance=args.guidance if args.guidance is not None else cfg.guidance,
        scale=args.scale if args.scale is not None else cfg.scale,
        both_passes=not args.no_both,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp))
        model = load_model("demo", home, choose_placement("cpu"))
        store = Store(home)

        def stage(text: str) -> None:
            print(f"[{(time.monotonic() - started) / 60:5.1f} min] {text}", file=sys.stderr)

        result = run_rerender(Generator(model), store, cfg, on_stage=stage)
        seconds = time.monotonic() - started
        grid = sample_grid(result)
        store.close()
        data = {**result.to_dict(), "seconds": seconds}
        # The thread count can change the last bits of a render, so a report names it when it was set.
        threads = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
        command = f"{threads} python benchmarks/bench_rerender.py {' '.join(sys.argv[1:])}".strip()
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            grid_name = None
            if grid is not None:
                grid_path = args.report.with_name(args.report.stem + "_grid.png")
                grid.save(grid_path)
                grid_name = grid_path.name
            args.report.write_text(report_markdown(result, seconds, command, grid_name))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"session: {result.session}; {len(result.rejects)} rejects re-rendered")
        for c in result.columns:
            s = c.summary()
            r = s["repaired"]
            print(
                f"{c.label:45s} {c.strength:4g}  repaired {r['rate']:6.1%} [{r['low']:.1%}, {r['high']:.1%}]  "
                f"new {s['new_kind']['rate']:5.1%}  colour {s['colour']['rate']:5.1%}  "
                f"shape {s['shape']['rate']:5.1%}  "
                f"kept {s['kept']['rate']:5.1%}  diff {s['diff']['mean']:5.1f}  n={c.n}"
            )
        print(f"{seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
