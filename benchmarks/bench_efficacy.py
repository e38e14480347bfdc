"""The efficacy experiment on the trained demo model: defect rates per way of using the "wrong" LoRA.

Generates a session, rejects what the detectors flag, trains the LoRA with negalora's trainer (with
and without prior preservation), renders held-out prompts x seeds in every column, and reports each
column's defect rate with a 95% Wilson interval. Writes a Markdown report and a sample grid.

    python benchmarks/bench_efficacy.py [--quick] [--report docs/efficacy.md] [--json]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from negalora.compare.grid import render_grid  # noqa: E402
from negalora.demo_world.efficacy import EfficacyConfig, run_efficacy  # noqa: E402
from negalora.device import choose_placement  # noqa: E402
from negalora.generate import Generator  # noqa: E402
from negalora.home import Home  # noqa: E402
from negalora.models.loader import load_model  # noqa: E402
from negalora.store import Store  # noqa: E402

GRID_ROWS = 8


def report_markdown(result, seconds: float, command: str, grid_name: str) -> str:
    cfg = result.config
    lines = [
        "# Does the `wrong` LoRA make defects rarer? (demo model)",
        "",
        f"Measured with `{command}` in {seconds / 60:.1f} minutes on the CPU. The demo model draws the shape",
        "world (`negalora/demo_world`); about a third of its training images carry a defect that no",
        "caption mentions (a duplicate shape, a shape cropped by the border, a dark scratch), so it makes",
        "such defects too. The detectors stand in for the artist: they reject the defective images of a",
        "session, the LoRA is trained on those rejects with negalora's trainer, and then held-out prompts",
        "and seeds are rendered in every way the product can use the LoRA. Every column renders the same",
        "prompt, seed and settings; only the negative token and the LoRA differ.",
        "",
        f"- Session: {result.session['images']} images, {result.session['rejected']} rejected "
        f"({', '.join(f'{k} {v}' for k, v in sorted(result.session['by_kind'].items()))}).",
        f"- LoRA: {', '.join(f'{k}={v}' for k, v in cfg.train.items())}; runs {', '.join(result.runs.values())}.",
        f"- Held out: {cfg.held_out_prompts} prompts x {cfg.held_out_seeds} seeds = "
        f"{cfg.held_out_prompts * cfg.held_out_seeds} images per column, {cfg.sampling_steps} steps, "
        f"CFG {cfg.guidance:g}, LoRA strength {cfg.scale:g}.",
        f"- Prompt adherence of the base model ({result.adherence['n']} images): colour "
        f"{result.adherence['colour']:.0%}, shape {result.adherence['shape']:.0%}.",
        "",
        "| column | defect rate | 95% interval | defective / n | duplicate | cropped | scratch |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result.columns:
        lo, hi = c.interval
        kinds = c.by_kind()
        lines.append(
            f"| {c.label} | {c.rate:.1%} | {lo:.1%} – {hi:.1%} | {c.defective} / {c.n} | "
            f"{kinds.get('duplicate', 0)} | {kinds.get('cropped', 0)} | {kinds.get('scratch', 0)} |"
        )
    lines += ["", f"![The first rows of the held-out grid]({grid_name})", ""]
    return "\n".join(lines)


def sample_grid(result) -> Image.Image:
    cols = result.columns
    cells = [[Image.open(c.image_paths[r]) for c in cols] for r in range(min(GRID_ROWS, cols[0].n))]
    prompts = [p for p in _row_prompts(result)][: len(cells)]
    grid, _ = render_grid(cells, [c.label for c in cols], prompts)
    return grid


def _row_prompts(result):
    from negalora.demo_world.efficacy import held_out_prompts

    cfg = result.config
    prompts = held_out_prompts(cfg.held_out_prompts, cfg.held_out_seed)
    return [(p, cfg.held_out_seed + k) for p in prompts for k in range(cfg.held_out_seeds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small version (a few minutes)")
    parser.add_argument("--session", type=int, help="session images (default 320)")
    parser.add_argument("--prompts", type=int, help="held-out prompts (default 80; x 5 seeds)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--train-steps", type=int)
    parser.add_argument("--rank", type=int)
    parser.add_argument("--scale", type=float)
    parser.add_argument("--no-prior", action="store_true", help="skip the prior-preservation LoRA")
    parser.add_argument("--report", type=Path, help="write the Markdown report here (and the grid beside it)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cfg = EfficacyConfig()
    if args.quick:
        cfg = EfficacyConfig(
            session_images=96, held_out_prompts=24, held_out_seeds=2, train={**cfg.train, "steps": 150}
        )
    train = dict(cfg.train)
    for key, value in (("lr", args.lr), ("steps", args.train_steps), ("rank", args.rank)):
        if value is not None:
            train[key] = value
    from dataclasses import replace

    cfg = replace(
        cfg,
        session_images=args.session or cfg.session_images,
        held_out_prompts=args.prompts or cfg.held_out_prompts,
        scale=args.scale if args.scale is not None else cfg.scale,
        train=train,
        prior_preservation=(False,) if args.no_prior else cfg.prior_preservation,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp))
        model = load_model("demo", home, choose_placement("cpu"))
        store = Store(home)
        result = run_efficacy(Generator(model), store, cfg, on_stage=lambda s: print(f"[{s}]", file=sys.stderr))
        seconds = time.monotonic() - started
        grid = sample_grid(result)
        store.close()
        command = "python benchmarks/bench_efficacy.py " + " ".join(sys.argv[1:])
        if args.report:
            grid_path = args.report.with_name(args.report.stem + "_grid.png")
            args.report.parent.mkdir(parents=True, exist_ok=True)
            grid.save(grid_path)
            args.report.write_text(report_markdown(result, seconds, command.strip(), grid_path.name))
    if args.json:
        print(json.dumps({**result.to_dict(), "seconds": seconds}, indent=2))
    else:
        print(f"session: {result.session}")
        print(f"adherence: {result.adherence}")
        for c in result.columns:
            lo, hi = c.interval
            print(f"{c.label:55s} {c.rate:6.1%}  [{lo:.1%}, {hi:.1%}]  n={c.n}  {c.by_kind()}")
        print(f"{seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
