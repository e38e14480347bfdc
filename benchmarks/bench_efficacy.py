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
from negalora.demo_world.efficacy import EfficacyConfig, held_out_rows, run_efficacy  # noqa: E402
from negalora.device import choose_placement  # noqa: E402
from negalora.generate import Generator  # noqa: E402
from negalora.home import Home  # noqa: E402
from negalora.lora_passes import DEFAULT  # noqa: E402
from negalora.models.loader import load_model  # noqa: E402
from negalora.store import Store  # noqa: E402


def report_markdown(result, seconds: float, command: str, grid_name: str) -> str:
    cfg = result.config
    lines = [
        "# Does the `wrong` LoRA make defects rarer? (demo model)",
        "",
        f"Measured with `{command}` in {seconds / 60:.1f} minutes on the CPU.",
        "",
        "The demo model draws the shape world (`negalora/demo_world`); about a third of its training",
        "images carry a defect that no caption mentions (a duplicate shape, a shape cropped by the",
        "border, a dark scratch), so it makes such defects too. The detectors stand in for the artist:",
        "they reject the defective images of a session (and any image with no shape at all), the LoRA is",
        "trained on those rejects with negalora's trainer, and held-out prompts and seeds are rendered",
        "in every way the product can use the LoRA. Every column renders the same prompts, seeds and",
        "settings; only the negative token and the LoRA differ. Earlier, shorter probes are in",
        "[efficacy_probes.md](efficacy_probes.md).",
        "",
        f"- Session: {result.session['images']} images, {result.session['rejected']} rejected "
        f"({', '.join(f'{k} {v}' for k, v in sorted(result.session['by_kind'].items()))}).",
        f"- LoRA: {', '.join(f'{k}={v}' for k, v in cfg.train.items())}; runs {', '.join(result.runs.values())}.",
        f"- Held out: {cfg.held_out_prompts} prompts x {cfg.held_out_seeds} seeds = "
        f"{cfg.held_out_prompts * cfg.held_out_seeds} images per column, every row its own seed (none "
        f"used by the session; the world has 90 captions, so prompts repeat), {cfg.sampling_steps} steps, "
        f"CFG {cfg.guidance:g}, LoRA strength {cfg.scale:g}.",
        f"- Prompt adherence of the base model ({result.adherence['n']} images): colour "
        f"{result.adherence['colour']:.0%}, shape {result.adherence['shape']:.0%}.",
        "",
        "| column | defect rate | 95% interval | defective / n | duplicate | cropped | scratch | no shape "
        "| colour as asked | shape as asked |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result.columns:
        lo, hi = c.interval
        kinds, agree = c.by_kind(), c.summary()["adherence"]
        lines.append(
            f"| {c.label} | {c.rate:.1%} | {lo:.1%} – {hi:.1%} | {c.defective} / {c.n} | "
            f"{kinds.get('duplicate', 0)} | {kinds.get('cropped', 0)} | {kinds.get('scratch', 0)} | "
            f"{kinds.get('missing', 0)} | {agree['colour']:.0%} | {agree['shape']:.0%} |"
        )
    lines += ["", *verdict(result), "", f"![The first rows of the held-out grid]({grid_name})", ""]
    return "\n".join(lines)


def verdict(result) -> list[str]:
    """What the table says, computed from it: the best way, the default way against base, the goal."""
    base = result.column("base")
    default = next(c for c in result.columns if c.key.startswith(f"lora_{DEFAULT}_"))
    loras = [c for c in result.columns if c.key.startswith("lora_")]
    best = min(loras, key=lambda c: c.rate)
    change = (default.rate - base.rate) / base.rate if base.rate else 0.0
    apart = default.interval[1] < base.interval[0]
    goal = change <= -0.4 and apart and base.rate >= 0.10
    paired = default.against(base)
    return [
        f"- Fewest defects of the LoRA ways: **{best.label}** ({best.rate:.1%}).",
        f"- The product's default way ({default.label}) against base: {change:+.0%} relative; "
        f"the 95% intervals {'do not overlap' if apart else 'overlap'}.",
        f"- Row by row (the same prompt, seed and noise): of the {paired['base_defective']} rows where base "
        f"drew a defect, the default way drew none on {paired['fixed']}; of the {base.n - paired['base_defective']} "
        f"clean rows it drew one on {paired['broken']}.",
        f"- Goal (base at least 10%, the default way at least 40% below it, intervals apart): "
        f"**{'met' if goal else 'not met'}**.",
    ]


def sample_grid(result) -> Image.Image:
    cols = result.columns
    n = min(len(c.images) for c in cols)
    cells = [[c.images[r] for c in cols] for r in range(n)]
    rows = held_out_rows(result.config)[:n]
    grid, _ = render_grid(cells, [c.label for c in cols], rows)
    return grid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small version (a few minutes)")
    parser.add_argument("--session", type=int, help="session images (default 2000)")
    parser.add_argument("--prompts", type=int, help="held-out prompts (default 200; x 5 seeds)")
    parser.add_argument("--lr", type=float, help="the LoRA's learning rate (default 3e-4)")
    parser.add_argument("--train-steps", type=int, help="training steps (default 800, batch 4)")
    parser.add_argument("--rank", type=int, help="the LoRA's rank (default 16)")
    parser.add_argument(
        "--feed-forward",
        action=argparse.BooleanOptionalAction,
        help="the LoRA on the feed-forward layers too (default: on)",
    )
    parser.add_argument("--guidance", type=float, help="CFG of the session and of every column (default 3)")
    parser.add_argument("--scale", type=float)
    parser.add_argument("--no-prior", action="store_true", help="skip the prior-preservation LoRA")
    parser.add_argument("--report", type=Path, help="write the Markdown report here (and the grid beside it)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cfg = EfficacyConfig()
    if args.quick:
        cfg = EfficacyConfig(
            session_images=320, held_out_prompts=40, held_out_seeds=5, train={**cfg.train, "steps": 400}
        )
    train = dict(cfg.train)
    for key, value in (("lr", args.lr), ("steps", args.train_steps), ("rank", args.rank)):
        if value is not None:
            train[key] = value
    if args.feed_forward is not None:
        train["feed_forward"] = args.feed_forward
    from dataclasses import replace

    cfg = replace(
        cfg,
        session_images=args.session or cfg.session_images,
        held_out_prompts=args.prompts or cfg.held_out_prompts,
        scale=args.scale if args.scale is not None else cfg.scale,
        guidance=args.guidance if args.guidance is not None else cfg.guidance,
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
