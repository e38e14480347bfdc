"""Learning from picks too, on the trained demo model: defect rates and prompt adherence of the
`wrong`, `right`, KTO and DPO LoRAs and their combinations, on efficacy's held-out rows.

Generates efficacy's session; the detectors reject the defective images and pick clean, as-prompted
ones (one per reject, of its prompt and size, so every reject has its pair); trains the four LoRAs
with negalora's trainer; renders the held-out rows in every way (base; negative `wrong` only; the
`wrong` LoRA on the negative pass; `right`, KTO and DPO on the positive pass, KTO and DPO on both
passes; each liked LoRA on the positive pass with the `wrong` one on the negative pass) and reports
each column's defect rate, colour and shape as prompted with 95% intervals, and the issue's target.

--probe instead trains KTO and DPO over a small grid of beta and learning rate on the same session,
reads their checkpoints on validation rows of their own, and writes (or replaces) only the report's
probe section; the full run keeps the section a probe wrote.

    OMP_NUM_THREADS=1 python benchmarks/bench_preference.py [--quick] [--probe] \
        [--report docs/efficacy_preference.md] [--json]
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

from negalora.demo_world.preference import (  # noqa: E402
    WAYS_BY_KEY,
    PreferenceConfig,
    default_grid,
    probe_markdown,
    probe_section_of,
    replace_probe_section,
    report_markdown,
    run_preference,
    run_probe,
    sample_grid,
)
from negalora.device import choose_placement  # noqa: E402
from negalora.generate import Generator  # noqa: E402
from negalora.home import Home  # noqa: E402
from negalora.models.loader import load_model  # noqa: E402
from negalora.store import Store  # noqa: E402

# A few minutes: a small session, 80 held-out rows, short runs.
QUICK = dict(session_images=400, held_out_prompts=40, held_out_seeds=2, probe_prompts=20, probe_seeds=2)
QUICK_STEPS = 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small version (a few minutes)")
    parser.add_argument("--probe", action="store_true", help="the KTO/DPO beta, lr and steps probe instead")
    parser.add_argument("--session", type=int, help="session images (default 2000)")
    parser.add_argument("--train-steps", type=int, help="every LoRA's training steps (default 800, batch 4)")
    parser.add_argument("--picks-per-reject", type=int, help="picks per reject (default 1; 0: every clean image)")
    parser.add_argument("--ways", nargs="+", choices=list(WAYS_BY_KEY), help="the columns (base first)")
    parser.add_argument("--report", type=Path, help="write the Markdown report here (and the grid beside it)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    cfg = PreferenceConfig()
    steps = args.train_steps or (QUICK_STEPS if args.quick else None)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    if steps:
        cfg = replace(cfg, **{k: {**cfg.recipe(k), "steps": steps} for k in ("wrong", "right", "kto", "dpo")})
    if args.session:
        cfg = replace(cfg, session_images=args.session)
    if args.picks_per_reject is not None:
        cfg = replace(cfg, picks_per_reject=args.picks_per_reject)
    if args.ways:
        cfg = replace(cfg, ways=tuple(args.ways))
    started = time.monotonic()

    def stage(text: str) -> None:
        print(f"[{(time.monotonic() - started) / 60:5.1f} min] {text}", file=sys.stderr, flush=True)

    # The thread count can change the last bits of a render, so a report names it when it was set.
    threads = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
    command = f"{threads} python benchmarks/bench_preference.py {' '.join(sys.argv[1:])}".strip()
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp))
        model = load_model("demo", home, choose_placement("cpu"))
        store = Store(home)
        generator = Generator(model)
        if args.probe:
            grid = default_grid(steps or 800, (steps or 800) // 2)
            probe = run_probe(generator, store, cfg, grid, on_stage=stage)
            seconds = time.monotonic() - started
            store.close()
            data = {**probe.to_dict(), "seconds": seconds}
            if args.report:
                section = probe_markdown(probe, seconds, command)
                old = args.report.read_text() if args.report.exists() else "# Learning from picks too (demo model)\n"
                args.report.parent.mkdir(parents=True, exist_ok=True)
                args.report.write_text(replace_probe_section(old, section))
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                for row in data["rows"]:
                    print(
                        f"{row['lora']:4s} beta={row['beta']:<8g} lr={row['lr']:<7g} step {row['step']:4d}  "
                        f"{row['rate']:6.1%} [{row['low']:.1%}, {row['high']:.1%}]  colour {row['colour']['rate']:5.1%}"
                        f"  shape {row['shape']['rate']:5.1%}  keeps prompt {row['keeps_prompt']}"
                    )
                print(f"base {data['base']['rate']:.1%}; chosen {data['chosen']}; {seconds / 60:.1f} min")
            return 0
        result = run_preference(generator, store, cfg, on_stage=stage)
        seconds = time.monotonic() - started
        grid = sample_grid(result)
        store.close()
    data = {**result.to_dict(), "seconds": seconds}
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        grid_name = None
        if grid is not None:
            grid_path = args.report.with_name(args.report.stem + "_grid.png")
            grid.save(grid_path)
            grid_name = grid_path.name
        probe = probe_section_of(args.report.read_text()) if args.report.exists() else None
        args.report.write_text(report_markdown(result, seconds, command, grid_name, probe))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"session: {data['session']}")
        for c in data["columns"]:
            print(
                f"{c['label']:50s} {c['rate']:6.1%} [{c['low']:.1%}, {c['high']:.1%}]  {c['relative']:+5.0%}  "
                f"colour {c['colour']['rate']:5.1%}  shape {c['shape']['rate']:5.1%}  n={c['n']}  "
                f"target {'met' if c['target']['met'] else 'no'}"
            )
        print(f"{seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
