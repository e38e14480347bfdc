"""``negalora compare`` (fixed-seed comparison grids and sweeps) and ``negalora mark-best``."""

from pathlib import Path

from negalora.api import DEFAULT_STRENGTH
from negalora.cli.common import (
    BATCH_HELP,
    add_common,
    batch_size,
    emit,
    float_list,
    load_for_generation,
    parse_size,
    positive_int,
)
from negalora.errors import NegaloraError
from negalora.lora_passes import DEFAULT, LORA_PASSES, POSITIVE
from negalora.schedulers import DEFAULT_SCHEDULER


def add_parsers(sub) -> None:
    c = sub.add_parser(
        "compare",
        help="fixed-seed comparison grid: base, negative token, LoRA + negative token (or sweeps)",
        description="Render every prompt x seed in columns that differ only in the negative token and the LoRA. "
        "Three-way by default (base | negative | LoRA as --lora-passes says | LoRA on the other passes | with "
        "--negative-lora, the LoRA beside a second one on the negative pass); --scales makes a "
        "LoRA-strength sweep, --checkpoints a sweep over a run's checkpoints. Every cell is stored as an image.",
    )
    c.add_argument("prompt", nargs="*", help="test prompts (or --prompt-set)")
    c.add_argument("--lora", required=True, metavar="FILE_OR_RUN", help="a LoRA .safetensors file or a training run id")
    c.add_argument("--step", type=int, metavar="N", help="with a run: its checkpoint (default: marked best, else last)")
    c.add_argument("--seed", type=int, default=1, metavar="S", help="first seed (default 1)")
    c.add_argument("--count", type=positive_int, default=2, metavar="K", help="seeds per prompt: S..S+K-1 (default 2)")
    c.add_argument("--prompt-set", metavar="NAME", help="a stored test-prompt set (its prompts and seeds)")
    c.add_argument("--scale", type=float, default=1.0, metavar="X", help="LoRA strength (default 1)")
    c.add_argument("--scales", metavar="LIST", help="sweep LoRA strength, e.g. 0,0.25,0.5,0.75,1,1.25,1.5")
    c.add_argument(
        "--checkpoints", nargs="?", const="all", metavar="LIST", help="sweep the run's checkpoints (all, or 250,500)"
    )
    c.add_argument(
        "--lora-passes",
        choices=LORA_PASSES,
        help=f"how the LoRA columns apply it (default: where it measured best: {DEFAULT} for a `wrong` LoRA, "
        f"{POSITIVE} for a LoRA of what is liked: KTO, DPO, picks, whose columns then keep the prompt unchanged)",
    )
    c.add_argument(
        "--negative-lora",
        metavar="FILE_OR_RUN",
        help="three-way: add a column with this second LoRA on the negative pass beside --lora (with the token), "
        "e.g. a `wrong` run beside a KTO run on the positive pass",
    )
    c.add_argument("--negative-lora-step", type=int, metavar="N", help="with a run: its checkpoint (default: best)")
    c.add_argument("--negative-lora-scale", type=float, default=1.0, metavar="X", help="its strength (default 1)")
    c.add_argument("--no-extra-column", action="store_true", help="three columns only (no other-passes column)")
    c.add_argument("--token", default="wrong", metavar="T", help="the negative token (default wrong)")
    c.add_argument("--negative", default="", metavar="N", help="your own negative prompt, kept in every column")
    c.add_argument("--steps", type=int, default=25, metavar="N", help="sampling steps (default 25)")
    c.add_argument("--guidance", type=float, default=7.0, metavar="G", help="CFG scale (default 7)")
    c.add_argument("--size", metavar="WxH", help="image size (default: the model's native size)")
    c.add_argument("--scheduler", default=DEFAULT_SCHEDULER, metavar="NAME", help="sampler")
    c.add_argument(
        "--batch-size",
        type=batch_size,
        default=None,
        metavar="N|auto",
        help="cells per pipeline call within a column (default auto); " + BATCH_HELP.split(": ", 1)[1],
    )
    c.add_argument(
        "--init-image",
        action="append",
        default=[],
        metavar="ID|FILE",
        help="re-render this image in every column instead of a prompt (repeat for more rows); the prompt, "
        "if given, is used for all of them, else each image's own",
    )
    c.add_argument(
        "--strength",
        type=float,
        default=DEFAULT_STRENGTH,
        metavar="S",
        help=f"with --init-image: the denoising strength (default {DEFAULT_STRENGTH})",
    )
    c.add_argument("--out", type=Path, metavar="FILE", help="also write the grid PNG here")
    c.add_argument("--model", metavar="M")
    c.add_argument("--device", metavar="D")
    add_common(c)

    mb = sub.add_parser(
        "mark-best",
        help="mark a run's best checkpoint (the default for compare and export), or its best both-pass strength",
        description="STEP marks the checkpoint compare and export use by default. --scale marks the LoRA strength "
        "that looked best on both guidance passes (how A1111 and Forge apply a LoRA); the model card names it.",
    )
    mb.add_argument("run_id", metavar="RUN_ID")
    mb.add_argument("step", type=int, nargs="?", metavar="STEP")
    mb.add_argument("--scale", type=float, metavar="X", help="the best both-pass strength (from a --scales sweep)")
    add_common(mb)


def cmd_compare(args) -> int:
    from negalora.compare.runner import CHECKPOINT_SWEEP, SCALE_SWEEP, THREE_WAY, CompareRequest, run_comparison
    from negalora.generate import Generator
    from negalora.store import Store

    if args.scales and args.checkpoints:
        raise NegaloraError("--scales and --checkpoints: choose one sweep")
    if not args.prompt and not args.prompt_set and not args.init_image:
        raise NegaloraError("give test prompts, --prompt-set NAME or --init-image")
    width, height = parse_size(args.size)
    kind, steps_list = THREE_WAY, ()
    if args.scales:
        kind = SCALE_SWEEP
    elif args.checkpoints:
        kind = CHECKPOINT_SWEEP
        if args.checkpoints != "all":
            steps_list = tuple(int(x) for x in float_list(args.checkpoints, "--checkpoints"))
    request = CompareRequest(
        prompts=tuple(args.prompt),
        seeds=tuple(args.seed + k for k in range(args.count)),
        kind=kind,
        lora=args.lora,
        step=args.step,
        checkpoint_steps=steps_list,
        scale=args.scale,
        scales=float_list(args.scales, "--scales") if args.scales else CompareRequest.scales,
        token=args.token,
        base_negative=args.negative,
        lora_passes=args.lora_passes or DEFAULT,
        extra_column=not args.no_extra_column,
        negative_lora=args.negative_lora or "",
        negative_lora_step=args.negative_lora_step,
        negative_lora_scale=args.negative_lora_scale,
        steps=args.steps,
        guidance=args.guidance,
        width=width,
        height=height,
        scheduler=args.scheduler,
        prompt_set=args.prompt_set,
        batch_size=args.batch_size,
        init_images=tuple(args.init_image),
        strength=args.strength,
    )
    home, model, generator = load_for_generation(args, Generator)
    with Store(home) as store:
        if args.lora_passes is None:
            from dataclasses import replace

            from negalora.compare.prompt_sets import measured_passes

            request = replace(request, lora_passes=measured_passes(store, args.lora))
        result = run_comparison(generator, store, request)
        comparison = store.comparison(result.id)
    if args.out and result.grid_path is not None:
        from negalora.atomic import atomic_write_bytes

        atomic_write_bytes(args.out, result.grid_path.read_bytes())
    payload = {
        "comparison": result.id,
        "kind": kind,
        "run": comparison["run_id"],
        "step": comparison["step"],
        "lora": comparison["lora_path"],
        "grid": str(result.grid_path),
        "out": str(args.out) if args.out else None,
        "columns": [c.to_dict() for c in result.columns],
        "cells": [
            {k: cell[k] for k in ("row", "col", "image_id", "path", "prompt", "seed")}
            | {"column": result.columns[cell["col"]].key}
            for cell in comparison["cells"]
        ],
    }
    lines = [f"comparison {result.id}: {len(result.rows)} rows x {len(result.columns)} columns"]
    lines += [f"  grid {args.out or result.grid_path}"]
    lines += [f"  {c.label}" for c in result.columns]
    emit(args, payload, lines)
    return 0


def cmd_mark_best(args) -> int:
    from negalora.home import resolve_home
    from negalora.store import Store

    if args.step is None and args.scale is None:
        raise NegaloraError("mark-best: give a STEP, a --scale, or both")
    out, lines = {"run": args.run_id}, []
    with Store(resolve_home(args.home)) as store:
        if args.step is not None:
            store.set_best_step(args.run_id, args.step)
            out["best_step"] = args.step
            lines.append(f"run {args.run_id}: best checkpoint is step {args.step}")
        if args.scale is not None:
            store.set_best_scale(args.run_id, args.scale)
            out["best_scale"] = args.scale
            lines.append(f"run {args.run_id}: best strength on both passes is {args.scale:g}")
    emit(args, out, lines)
    return 0


COMMANDS = {"compare": cmd_compare, "mark-best": cmd_mark_best}
