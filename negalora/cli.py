"""The command line: the GUI's twin, for scripts, remote workstations and tests.

Exit codes: 0 success, 2 bad usage or bad input (one-line reason on stderr), 1 unexpected failure.
"""

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from negalora import __version__
from negalora.errors import NegaloraError
from negalora.lora_passes import DEFAULT, LORA_PASSES

DEFAULT_MODEL = "demo"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", metavar="DIR", help="data directory (default: $NEGALORA_HOME or the user-data folder)")
    p.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")


PAGE_NAMES = ("generate", "gallery", "train", "compare", "export")


def _add_gui_options(p: argparse.ArgumentParser, top_level: bool) -> None:
    # At the top level the dest names differ from the subcommands' so argparse keeps both.
    prefix = "gui_" if top_level else ""
    p.add_argument(
        "--home",
        dest=f"{prefix}home",
        metavar="DIR",
        help="data directory (default: $NEGALORA_HOME or the user-data folder)",
    )
    p.add_argument("--model", dest=f"{prefix}model", metavar="M", help="model to open the app with")
    p.add_argument("--device", dest=f"{prefix}device", metavar="D", help="cpu, cuda or mps")
    p.add_argument(
        "--screenshot",
        dest=f"{prefix}screenshot",
        type=Path,
        metavar="FILE",
        help="render the window offscreen to a PNG and exit",
    )
    p.add_argument("--page", dest=f"{prefix}page", choices=PAGE_NAMES, help="page to open")


def cmd_gui(args) -> int:
    from negalora.home import resolve_home
    from negalora.ui.app import run_app

    def pick(name):
        value = getattr(args, name, None)
        return value if value is not None else getattr(args, f"gui_{name}", None)

    home = resolve_home(pick("home"))
    screenshot = pick("screenshot")
    if screenshot is None:
        from negalora.ui.platform_check import window_problem

        problem = window_problem()  # before Qt, which aborts the process where it cannot open a window
        if problem:
            raise NegaloraError(problem)
    return run_app(home, model=pick("model"), device=pick("device"), screenshot=screenshot, page=pick("page"))


def _batch_size(text: str) -> int | None:
    """``auto`` (None) or a whole number, for --batch-size."""
    from negalora.api import check_batch_size

    if text.strip().lower() == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number or auto") from None
    try:
        check_batch_size(n)
    except NegaloraError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return n


BATCH_HELP = (
    "images per pipeline call, as A1111's batch size: a number, or auto (the default: as many as the device, "
    "the image size and free memory suit; 1 where a batch would not fit). Every image keeps its own seed"
)


def build_parser() -> argparse.ArgumentParser:
    from negalora.schedulers import DEFAULT_SCHEDULER, SCHEDULERS

    parser = argparse.ArgumentParser(
        prog="negalora",
        description="Generate SDXL images, reject the bad ones, train a 'wrong' LoRA from them.",
    )
    parser.add_argument("--version", action="version", version=f"negalora {__version__}")
    _add_gui_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gui = sub.add_parser("gui", help="open the app (the same as no command)")
    _add_gui_options(gui, top_level=False)

    g = sub.add_parser("generate", help="generate images into the store")
    g.add_argument(
        "prompt", nargs="+", help="one or more prompts (Compel syntax: (word)++, (word)1.3, .blend(), .and())"
    )
    g.add_argument("--negative", default="", metavar="N", help="negative prompt")
    g.add_argument(
        "--seed", type=int, metavar="S", help="first seed; image k gets seed S+k (default: random, always stored)"
    )
    g.add_argument("--count", type=int, default=1, metavar="K", help="images per prompt (default 1)")
    g.add_argument("--batch-size", type=_batch_size, default=None, metavar="N|auto", help=BATCH_HELP)
    g.add_argument("--steps", type=int, default=25, metavar="N", help="sampling steps (default 25)")
    g.add_argument("--guidance", type=float, default=7.0, metavar="G", help="CFG scale (default 7)")
    g.add_argument("--size", metavar="WxH", help="image size, multiples of 8 (default: the model's native size)")
    g.add_argument(
        "--scheduler",
        default=DEFAULT_SCHEDULER,
        metavar="NAME",
        help=f"sampler: {', '.join(SCHEDULERS)} (default {DEFAULT_SCHEDULER})",
    )
    g.add_argument(
        "--model",
        metavar="M",
        help="demo, a diffusers folder, an SDXL .safetensors file or a hub id "
        "(default: $NEGALORA_MODEL, the home's settings, else demo)",
    )
    g.add_argument("--vae", metavar="PATH", help="a VAE folder or .safetensors file (an fp16-fix VAE runs in fp16)")
    g.add_argument("--refiner", metavar="PATH", help="an SDXL refiner folder or .safetensors file")
    g.add_argument(
        "--refiner-switch",
        type=float,
        default=0.8,
        metavar="F",
        help="hand off to the refiner at this fraction (default 0.8)",
    )
    g.add_argument("--lora", metavar="FILE", help="a LoRA .safetensors file (kohya or diffusers format)")
    g.add_argument("--lora-scale", type=float, default=1.0, metavar="X", help="LoRA strength (default 1)")
    g.add_argument(
        "--lora-passes",
        choices=LORA_PASSES,
        default=DEFAULT,
        help="guidance passes the LoRA acts on: both (as A1111/ComfyUI) or negative (the unconditional pass "
        f"only; default {DEFAULT})",
    )
    g.add_argument("--device", metavar="D", help="cpu, cuda or mps (default: the best available)")
    _add_common(g)

    w = sub.add_parser("make-wrong", help="generate Woolf's 'wrong' set (defect keywords, CFG 8-13) as rejects")
    w.add_argument("--count", type=int, default=78, metavar="K", help="images (default 78)")
    w.add_argument("--batch-size", type=_batch_size, default=None, metavar="N|auto", help=BATCH_HELP)
    w.add_argument("--seed", type=int, default=0, metavar="S", help="first seed (default 0)")
    w.add_argument("--steps", type=int, default=25, metavar="N")
    w.add_argument("--size", metavar="WxH")
    w.add_argument("--scheduler", default=DEFAULT_SCHEDULER, metavar="NAME")
    w.add_argument("--model", metavar="M")
    w.add_argument("--device", metavar="D")
    _add_common(w)

    t = sub.add_parser("train", help="train the 'wrong' LoRA from the rejected images")
    t.add_argument(
        "--preset",
        metavar="NAME",
        help="woolf, 12gb or cpu-demo (default: cpu-demo on the demo model, the recipe measured in "
        "docs/efficacy.md; woolf on an SDXL)",
    )
    t.add_argument("--token", metavar="T", help="instance token (default wrong)")
    t.add_argument("--rank", type=int, metavar="R")
    t.add_argument("--alpha", type=float, metavar="A", help="LoRA alpha (default: the rank)")
    t.add_argument("--feed-forward", action="store_true", default=None, help="also adapt the feed-forward layers")
    t.add_argument("--train-text-encoder", action="store_true", default=None, help="a LoRA on both text encoders too")
    t.add_argument("--steps", type=int, metavar="N")
    t.add_argument("--lr", type=float, metavar="X")
    t.add_argument("--lr-schedule", metavar="S", help="constant, constant_with_warmup or cosine")
    t.add_argument("--warmup", type=int, dest="warmup_steps", metavar="N")
    t.add_argument("--resolution", type=int, metavar="N", help="default: the model's native size")
    t.add_argument("--batch", type=int, metavar="B")
    t.add_argument("--grad-accum", type=int, metavar="N")
    t.add_argument("--flip", action="store_true", default=None, help="random horizontal flips")
    t.add_argument("--min-snr", type=float, dest="min_snr_gamma", metavar="G", help="min-SNR gamma (e.g. 5)")
    t.add_argument("--noise-offset", type=float, metavar="X")
    t.add_argument("--optimizer", metavar="O", help="adamw or adamw8bit (CUDA, needs the cuda extra)")
    t.add_argument("--mixed-precision", metavar="P", help="auto, no, bf16 or fp16")
    t.add_argument("--gradient-checkpointing", action="store_true", default=None)
    t.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
        help="torch.compile the UNet (default backend inductor): faster steps after a compile of a few "
        "minutes, so for long runs",
    )
    t.add_argument("--seed", type=int, metavar="S")
    t.add_argument("--checkpoint-every", type=int, metavar="N")
    t.add_argument("--keep-last", type=int, metavar="K", help="checkpoints kept (0: all)")
    t.add_argument("--validation-prompt", action="append", dest="validation_prompts", metavar="P")
    t.add_argument("--validation-steps", type=int, metavar="N", help="sampling steps of validation images (0: none)")
    t.add_argument(
        "--validation-passes",
        choices=["negative", "both"],
        help="the guidance passes the LoRA acts on in validation images (default negative, the product's way)",
    )
    t.add_argument(
        "--validation-cfg",
        type=float,
        dest="validation_guidance",
        metavar="G",
        help="CFG of validation images (default: the model's default test set's: 3 on the demo model, 7 on an SDXL)",
    )
    t.add_argument("--reason", action="append", dest="reasons", metavar="R", help="only rejects with this reason")
    t.add_argument("--captions-with-reasons", action="store_true", default=None, help='captions like "wrong, hands"')
    t.add_argument("--extra", action="append", metavar="PATH", help="more files or folders to train on")
    t.add_argument(
        "--prior-preservation", action="store_true", default=None, help="train beside class images from the base model"
    )
    t.add_argument("--class-prompt", metavar="P", help='caption of the class images (default "": unconditional)')
    t.add_argument("--class-images", type=int, metavar="N", help="class images (default: as many as the rejects)")
    t.add_argument("--prior-weight", type=float, metavar="W", help="weight of the class loss (default 1)")
    t.add_argument("--since", metavar="DATE", help="only rejects rated on or after this ISO date/time")
    t.add_argument("--until", metavar="DATE", help="only rejects rated on or before this ISO date/time")
    t.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    t.add_argument("--model", metavar="M")
    t.add_argument("--device", metavar="D")
    _add_common(t)

    c = sub.add_parser(
        "compare",
        help="fixed-seed comparison grid: base, negative token, LoRA + negative token (or sweeps)",
        description="Render every prompt x seed in columns that differ only in the negative token and the LoRA. "
        "Three-way by default (base | negative | LoRA as --lora-passes says, default on the negative pass only | "
        "LoRA on the other passes); --scales makes a "
        "LoRA-strength sweep, --checkpoints a sweep over a run's checkpoints. Every cell is stored as an image.",
    )
    c.add_argument("prompt", nargs="*", help="test prompts (or --prompt-set)")
    c.add_argument("--lora", required=True, metavar="FILE_OR_RUN", help="a LoRA .safetensors file or a training run id")
    c.add_argument("--step", type=int, metavar="N", help="with a run: its checkpoint (default: marked best, else last)")
    c.add_argument("--seed", type=int, default=1, metavar="S", help="first seed (default 1)")
    c.add_argument("--count", type=_positive_int, default=2, metavar="K", help="seeds per prompt: S..S+K-1 (default 2)")
    c.add_argument("--prompt-set", metavar="NAME", help="a stored test-prompt set (its prompts and seeds)")
    c.add_argument("--scale", type=float, default=1.0, metavar="X", help="LoRA strength (default 1)")
    c.add_argument("--scales", metavar="LIST", help="sweep LoRA strength, e.g. 0,0.25,0.5,0.75,1,1.25,1.5")
    c.add_argument(
        "--checkpoints", nargs="?", const="all", metavar="LIST", help="sweep the run's checkpoints (all, or 250,500)"
    )
    c.add_argument(
        "--lora-passes", choices=LORA_PASSES, default=DEFAULT, help=f"how the LoRA columns apply it (default {DEFAULT})"
    )
    c.add_argument("--no-extra-column", action="store_true", help="three columns only (no other-passes column)")
    c.add_argument("--token", default="wrong", metavar="T", help="the negative token (default wrong)")
    c.add_argument("--negative", default="", metavar="N", help="your own negative prompt, kept in every column")
    c.add_argument("--steps", type=int, default=25, metavar="N", help="sampling steps (default 25)")
    c.add_argument("--guidance", type=float, default=7.0, metavar="G", help="CFG scale (default 7)")
    c.add_argument("--size", metavar="WxH", help="image size (default: the model's native size)")
    c.add_argument("--scheduler", default=DEFAULT_SCHEDULER, metavar="NAME", help="sampler")
    c.add_argument(
        "--batch-size",
        type=_batch_size,
        default=None,
        metavar="N|auto",
        help="cells per pipeline call within a column (default auto); " + BATCH_HELP.split(": ", 1)[1],
    )
    c.add_argument("--out", type=Path, metavar="FILE", help="also write the grid PNG here")
    c.add_argument("--model", metavar="M")
    c.add_argument("--device", metavar="D")
    _add_common(c)

    mb = sub.add_parser(
        "mark-best",
        help="mark a run's best checkpoint (the default for compare and export), or its best both-pass strength",
        description="STEP marks the checkpoint compare and export use by default. --scale marks the LoRA strength "
        "that looked best on both guidance passes (how A1111 and Forge apply a LoRA); the model card names it.",
    )
    mb.add_argument("run_id", metavar="RUN_ID")
    mb.add_argument("step", type=int, nargs="?", metavar="STEP")
    mb.add_argument("--scale", type=float, metavar="X", help="the best both-pass strength (from a --scales sweep)")
    _add_common(mb)

    r = sub.add_parser("rate", help="reject, pick or clear images")
    r.add_argument("image_id", nargs="+", type=int, metavar="IMAGE_ID")
    r.add_argument("verdict", choices=["reject", "pick", "clear"])
    r.add_argument("--reason", action="append", default=[], metavar="R", help="a reason tag (repeatable), e.g. hands")
    _add_common(r)

    i = sub.add_parser(
        "import",
        help="import image files or folders into the store",
        description="Import images. Refused files are listed on stderr; the exit code is 2 only when "
        "nothing could be imported.",
    )
    i.add_argument("path", nargs="+", type=Path)
    i.add_argument("--reject", action="store_true", help="mark the imported images rejected")
    i.add_argument("--reason", action="append", default=[], metavar="R", help="reason tag for --reject (repeatable)")
    _add_common(i)

    lst = sub.add_parser("list", help="list images, runs, models, comparisons or blind-vote results")
    lst.add_argument("what", choices=["images", "runs", "models", "comparisons", "votes"])
    lst.add_argument("--rating", choices=["reject", "pick", "unrated"], help="only images with this rating")
    lst.add_argument("--search", metavar="TEXT", help="only images whose prompt contains TEXT")
    lst.add_argument("--limit", type=_positive_int, metavar="N")
    _add_common(lst)

    rg = sub.add_parser("regenerate", help="make a stored image again from its recipe and check the pixels")
    rg.add_argument("image_id", type=int, metavar="IMAGE_ID")
    rg.add_argument("--device", metavar="D", help="cpu, cuda or mps")
    _add_common(rg)

    ex = sub.add_parser(
        "export",
        help="export a run's LoRA for A1111, ComfyUI (kohya) or diffusers, verified by reloading it",
        description="Write a checkpoint of a training run as a LoRA file with header metadata and a model card "
        "beside it. Before the file is put in place it is reloaded with diffusers into the run's base model "
        "and must render the same image as the app does with the checkpoint (within 2/255).",
    )
    ex.add_argument("run_id", metavar="RUN_ID")
    ex.add_argument("--step", type=int, metavar="N", help="checkpoint step (default: the best step, else the last)")
    ex.add_argument("--format", required=True, choices=["kohya", "diffusers"], help="kohya: A1111 and ComfyUI")
    ex.add_argument(
        "--out",
        metavar="FILE",
        help="a .safetensors file or a folder (default: <home>/exports/NAME.safetensors; diffusers: "
        "<home>/exports/NAME/pytorch_lora_weights.safetensors)",
    )
    ex.add_argument(
        "--name", metavar="NAME", help="title and output name (default: the --out file's, else <token>-<run>-step<N>)"
    )
    ex.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the reload-and-render check (it needs the run's base model); the file is still read back",
    )
    ex.add_argument("--model", metavar="M", help="the run's base model, if it moved (must be the same model)")
    ex.add_argument("--device", metavar="D", help="cpu, cuda or mps")
    _add_common(ex)

    from negalora import cli_store

    cli_store.add_parsers(sub, _add_common)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _parse_size(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise NegaloraError(f"size {text!r}: expected WxH, e.g. 1024x1024") from None


def _emit(args, payload: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        for line in lines:
            print(line)


def _model_spec(args, home) -> str:
    return args.model or os.environ.get("NEGALORA_MODEL") or home.settings().get("model") or DEFAULT_MODEL


def cmd_generate(args) -> int:
    from negalora.generate import GenerateRequest, check_request

    width, height = _parse_size(args.size)
    request = GenerateRequest(
        prompts=tuple(args.prompt),
        negative=args.negative,
        count=args.count,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        width=width,
        height=height,
        scheduler=args.scheduler,
        lora=args.lora,
        lora_scale=args.lora_scale,
        lora_passes=args.lora_passes,
        refiner_switch=args.refiner_switch,
        batch_size=args.batch_size,
    )
    check_request(request)  # before anything is loaded or written

    from negalora.cancel import CancelToken
    from negalora.generate import Generator, generate_to_store
    from negalora.store import Store

    home, model, generator = _load_for_generation(args, Generator)
    generator.plan(request)  # model-dependent checks (size, LoRA file) before the store is touched
    store = Store(home)
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(args.prompt) * args.count, unit="img", file=sys.stderr)
    cancel = CancelToken()
    results = []

    def on_image(stored, recipe):
        results.append((stored, recipe))
        if bar is not None:
            bar.update(1)

    try:
        generate_to_store(generator, store, request, cancel=cancel, on_image=on_image)
    except KeyboardInterrupt:
        cancel.cancel()
        print(f"negalora: cancelled; {len(results)} image(s) kept", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
        store.close()
    images = [
        {
            "id": s.id,
            "path": str(s.path),
            "sha256": s.sha256,
            "duplicate": s.duplicate,
            "prompt": r.prompt,
            "negative": r.negative,
            "seed": r.seed,
            "steps": r.steps,
            "guidance": r.guidance,
            "size": f"{r.width}x{r.height}",
            "scheduler": r.scheduler,
            "model": r.model,
            "batch_size": r.batch_size,
        }
        for s, r in results
    ]
    _emit(
        args,
        {"model": model.name, "device": model.placement.label, "images": images},
        [f"#{im['id']}  seed {im['seed']}  {im['path']}" for im in images],
    )
    return 0


def cmd_make_wrong(args) -> int:
    from negalora.generate import Generator, check_request, generate_to_store
    from negalora.wrong_set import wrong_set_requests

    if args.count < 1:
        raise NegaloraError(f"count {args.count}: must be at least 1")
    width, height = _parse_size(args.size)
    requests = wrong_set_requests(
        args.count,
        seed=args.seed,
        steps=args.steps,
        width=width,
        height=height,
        scheduler=args.scheduler,
        batch_size=args.batch_size,
    )
    for r in requests:
        check_request(r)
    home, model, generator = _load_for_generation(args, Generator)
    for r in requests:
        generator.plan(r)
    from negalora.store import Store

    store = Store(home)
    made = []

    def on_image(stored, recipe) -> None:
        if not stored.duplicate:  # an image already in the store keeps the artist's verdict
            store.rate([stored.id], "reject")
        made.append(
            {
                "id": stored.id,
                "path": str(stored.path),
                "seed": recipe.seed,
                "guidance": recipe.guidance,
                "prompt": recipe.prompt,
                "batch_size": recipe.batch_size,
            }
        )

    try:  # one job: images of the same CFG render in batches
        generate_to_store(generator, store, requests, on_image=on_image)
    finally:
        store.close()
    _emit(
        args, {"model": model.name, "rejected": made}, [f"#{m['id']}  cfg {m['guidance']:g}  {m['path']}" for m in made]
    )
    return 0


def _load_model(args):
    from negalora.device import choose_placement
    from negalora.home import resolve_home
    from negalora.models.loader import load_model

    home = resolve_home(args.home)
    placement = choose_placement(args.device)
    model = load_model(
        _model_spec(args, home), home, placement, vae=getattr(args, "vae", None), refiner=getattr(args, "refiner", None)
    )
    return home, model


def _load_for_generation(args, generator_cls):
    from negalora.hashing import HashCache

    home, model = _load_model(args)
    return home, model, generator_cls(model, HashCache(home.cache / "hashes.json"))


TRAIN_FIELDS = (
    "compile",
    "token",
    "rank",
    "alpha",
    "feed_forward",
    "train_text_encoder",
    "steps",
    "lr",
    "lr_schedule",
    "warmup_steps",
    "resolution",
    "batch",
    "grad_accum",
    "flip",
    "min_snr_gamma",
    "noise_offset",
    "optimizer",
    "mixed_precision",
    "gradient_checkpointing",
    "seed",
    "checkpoint_every",
    "keep_last",
    "validation_prompts",
    "validation_steps",
    "validation_passes",
    "validation_guidance",
    "reasons",
    "captions_with_reasons",
    "extra",
    "prior_preservation",
    "class_prompt",
    "class_images",
    "prior_weight",
)


def cmd_train(args) -> int:
    from negalora.home import resolve_home
    from negalora.train.config import default_preset, preset
    from negalora.train.trainer import Trainer

    overrides = {f: getattr(args, f) for f in TRAIN_FIELDS}
    for f in ("validation_prompts", "reasons", "extra"):
        overrides[f] = tuple(overrides[f]) if overrides[f] else None
    config = preset(args.preset or default_preset(_model_spec(args, resolve_home(args.home))), **overrides)
    config.check()
    home, model = _load_model(args)
    from negalora.store import Store

    store = Store(home)
    last = {}

    def on_event(e):
        if e["type"] == "preflight" and not args.json:
            for r in e["refused"]:
                print(f"negalora: refused {r['path']}: {r['reason']}", file=sys.stderr)
            for w in e["warnings"]:
                print(f"negalora: warning: {w}", file=sys.stderr)
        elif e["type"] == "train_step":
            last.update(e)
            if not args.json and (e["step"] % 10 == 0 or e["step"] == e["steps"]):
                print(f"step {e['step']}/{e['steps']}  loss {e['loss']:.4f}  {e['it_s']:.2f} it/s", file=sys.stderr)
        elif e["type"] == "nan_skip" and not args.json:
            print(f"negalora: step {e['step']}: non-finite loss, skipped", file=sys.stderr)

    import signal

    from negalora.cancel import CancelToken

    cancel = CancelToken()
    trainer = Trainer(home, store, model, on_event=on_event, cancel=cancel)
    # The first Ctrl+C stops at the next step with a checkpoint (resume continues there); a second one aborts.
    previous = signal.getsignal(signal.SIGINT)

    def first_interrupt(signum, frame):
        print("negalora: stopping after this step (Ctrl+C again to abort)", file=sys.stderr)
        cancel.cancel()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, first_interrupt)
    try:
        if args.resume:
            result = trainer.resume(args.resume)
        else:
            result = trainer.start(config, since=args.since, until=args.until)
    except KeyboardInterrupt:
        print("negalora: interrupted; resume with --resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        store.close()
    payload = {
        "run": result.run_id,
        "status": result.status,
        "steps_done": result.steps_done,
        "final_loss": result.final_loss,
        "checkpoints": result.checkpoints,
        "message": result.message,
    }
    lines = [
        f"run {result.run_id}: {result.status} at step {result.steps_done}"
        + (f", final loss {result.final_loss:.4f}" if result.final_loss is not None else "")
    ]
    lines += [f"  {c}" for c in result.checkpoints]
    if int(os.environ.get("RANK", "0")) == 0:  # under `accelerate launch` the main process reports
        _emit(args, payload, lines)
    if result.status == "stopped_nan":
        print(f"negalora: error: {result.message}", file=sys.stderr)
        return 1
    if result.status == "paused":
        print(f"negalora: paused: {result.message} (negalora train --resume {result.run_id})", file=sys.stderr)
        return 1
    return 0


def _float_list(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise NegaloraError(f"{what} {text!r}: expected numbers separated by commas") from None


def cmd_compare(args) -> int:
    from negalora.compare.runner import CHECKPOINT_SWEEP, SCALE_SWEEP, THREE_WAY, CompareRequest, run_comparison
    from negalora.generate import Generator
    from negalora.store import Store

    if args.scales and args.checkpoints:
        raise NegaloraError("--scales and --checkpoints: choose one sweep")
    if not args.prompt and not args.prompt_set:
        raise NegaloraError("give test prompts or --prompt-set NAME")
    width, height = _parse_size(args.size)
    kind, steps_list = THREE_WAY, ()
    if args.scales:
        kind = SCALE_SWEEP
    elif args.checkpoints:
        kind = CHECKPOINT_SWEEP
        if args.checkpoints != "all":
            steps_list = tuple(int(x) for x in _float_list(args.checkpoints, "--checkpoints"))
    request = CompareRequest(
        prompts=tuple(args.prompt),
        seeds=tuple(args.seed + k for k in range(args.count)),
        kind=kind,
        lora=args.lora,
        step=args.step,
        checkpoint_steps=steps_list,
        scale=args.scale,
        scales=_float_list(args.scales, "--scales") if args.scales else CompareRequest.scales,
        token=args.token,
        base_negative=args.negative,
        lora_passes=args.lora_passes,
        extra_column=not args.no_extra_column,
        steps=args.steps,
        guidance=args.guidance,
        width=width,
        height=height,
        scheduler=args.scheduler,
        prompt_set=args.prompt_set,
        batch_size=args.batch_size,
    )
    home, model, generator = _load_for_generation(args, Generator)
    store = Store(home)
    try:
        result = run_comparison(generator, store, request)
        comparison = store.comparison(result.id)
    finally:
        store.close()
    if args.out:
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
    _emit(args, payload, lines)
    return 0


def cmd_mark_best(args) -> int:
    from negalora.home import resolve_home
    from negalora.store import Store

    if args.step is None and args.scale is None:
        raise NegaloraError("mark-best: give a STEP, a --scale, or both")
    store = Store(resolve_home(args.home))
    out, lines = {"run": args.run_id}, []
    try:
        if args.step is not None:
            store.set_best_step(args.run_id, args.step)
            out["best_step"] = args.step
            lines.append(f"run {args.run_id}: best checkpoint is step {args.step}")
        if args.scale is not None:
            store.set_best_scale(args.run_id, args.scale)
            out["best_scale"] = args.scale
            lines.append(f"run {args.run_id}: best strength on both passes is {args.scale:g}")
    finally:
        store.close()
    _emit(args, out, lines)
    return 0


def cmd_rate(args) -> int:
    from negalora.home import resolve_home
    from negalora.store import Store

    verdict = None if args.verdict == "clear" else args.verdict
    store = Store(resolve_home(args.home))
    try:
        store.rate(args.image_id, verdict, args.reason or None)
        counts = store.counts()
    finally:
        store.close()
    _emit(
        args,
        {"rated": args.image_id, "verdict": args.verdict, "reasons": sorted(set(args.reason)), "counts": counts},
        [
            f"{args.verdict}: {', '.join(f'#{i}' for i in args.image_id)}  "
            f"({counts['reject']} rejected, {counts['pick']} picked)"
        ],
    )
    return 0


def cmd_import(args) -> int:
    from negalora.home import resolve_home
    from negalora.importing import import_files
    from negalora.store import Store

    store = Store(resolve_home(args.home))
    try:
        done, refused = import_files(store, args.path, reject=args.reject, reasons=tuple(args.reason))
    finally:
        store.close()
    for r in refused:
        print(f"negalora: refused {r.path}: {r.reason}", file=sys.stderr)
    _emit(
        args,
        {
            "imported": [{"id": d.id, "path": str(d.path), "sha256": d.sha256, "duplicate": d.duplicate} for d in done],
            "refused": [{"path": str(r.path), "reason": r.reason} for r in refused],
        },
        [f"#{d.id}  {d.path}" + ("  (already in the store)" if d.duplicate else "") for d in done],
    )
    if refused and not done:
        return 2
    return 0


def cmd_list(args) -> int:
    from negalora.home import resolve_home
    from negalora.store import Store

    store = Store(resolve_home(args.home))
    try:
        if args.what == "images":
            rows = store.images(args.rating, args.search, args.limit)
            lines = [
                f"#{r['id']:<6} {r['verdict'] or '-':7} {r['source']:9} "
                f"seed {r['seed'] if r['seed'] is not None else '-':<10} "
                f"{(r['prompt'] or r['original_name'])[:60]}"
                for r in rows
            ]
        elif args.what == "comparisons":
            rows = store.comparisons()
            lines = [
                f"#{r['id']:<5} {r['kind']:16} {r['status']:9} run {r['run_id'] or '-'} step {r['step'] or '-'}  "
                f"{r['grid_path'] or '-'}"
                for r in rows
            ]
        elif args.what == "votes":
            from negalora.compare.votes import win_rates

            rates = win_rates(store.votes())
            rows = [w.to_dict() for w in rates]
            lines = [w.describe() for w in rates]
        elif args.what == "models":
            rows = store.models()
            lines = [f"#{r['id']:<4} {r['name']:24} {r['source']:7} {r['hash'][:10]}  {r['location']}" for r in rows]
        else:
            rows = store.runs()
            for r in rows:
                r["config"] = json.loads(r["config"])
            lines = [
                f"{r['id']}  {r['status']:11} step {r['steps_done']:>6}/{r['config']['steps']:<6} "
                f"{r['images']} images  loss {r['final_loss'] if r['final_loss'] is not None else '-'}"
                for r in rows
            ]
    finally:
        store.close()
    _emit(args, {args.what: rows}, lines or [f"no {args.what}"])
    return 0


def cmd_regenerate(args) -> int:
    from negalora.device import choose_placement
    from negalora.generate import Generator, regenerate
    from negalora.hashing import HashCache
    from negalora.home import resolve_home
    from negalora.models.loader import load_model
    from negalora.pngmeta import png_bytes
    from negalora.store import Store

    home = resolve_home(args.home)
    store = Store(home)
    try:
        recipe = store.recipe(args.image_id)
        if recipe is None:
            raise NegaloraError(f"image {args.image_id}: has no recipe (imported, or no such image)")
        original = store.image(args.image_id)
        model = load_model(
            recipe.model_location,
            home,
            choose_placement(args.device),
            vae=recipe.vae_location or None,
            refiner=recipe.refiner_location or None,
        )
        hashes = HashCache(home.cache / "hashes.json")
        image = regenerate(Generator(model, hashes), recipe)
        stored = store.add_generated(
            recipe, store.ensure_model(model.name, model.source, model.location, model.sha256), png_bytes(image, recipe)
        )
    finally:
        store.close()
    identical = stored.sha256 == original["sha256"]
    diff = 0 if identical else _max_pixel_diff(Path(original["path"]), stored.path)
    # one image per call is held to identical pixels; an image of a batch is rendered again in a batch
    # of the same size, which on the CPU gives the same pixels, and is held to 2/255 (GPU kernels may
    # pick other algorithms from one call to the next)
    tolerance = 0 if recipe.batch_size == 1 else BATCH_TOLERANCE
    matches = diff is not None and diff <= tolerance
    held = "identical pixels" if tolerance == 0 else f"{tolerance}/255 (made in a batch of {recipe.batch_size})"
    if identical:
        said = "identical pixels"
    elif diff is None:
        said = f"#{args.image_id}'s file cannot be read to compare"
    else:
        said = f"at most {diff}/255 from #{args.image_id}" + ("" if matches else ", outside what it is held to")
    _emit(
        args,
        {
            "id": stored.id,
            "path": str(stored.path),
            "identical": identical,
            "original_id": args.image_id,
            "max_pixel_diff": diff,
            "held_to": held,
            "matches": matches,
        },
        [f"#{stored.id}  {stored.path}  ({said}; held to {held})"],
    )
    return 0


BATCH_TOLERANCE = 2  # /255


def _max_pixel_diff(a: Path, b: Path) -> int | None:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(a) as ia, Image.open(b) as ib:
            x, y = np.asarray(ia.convert("RGB"), dtype=np.int16), np.asarray(ib.convert("RGB"), dtype=np.int16)
    except OSError:
        return None
    return int(np.abs(x - y).max()) if x.shape == y.shape else 255


def cmd_export(args) -> int:
    from negalora.export import ExportRequest, plan_export, run_export
    from negalora.home import resolve_home
    from negalora.store import Store

    home = resolve_home(args.home)
    store = Store(home)
    try:
        request = ExportRequest(
            run_id=args.run_id,
            fmt=args.format,
            step=args.step,
            name=args.name,
            out=args.out,
            verify=not args.no_verify,
        )
        plan = plan_export(store, request)  # every input check before a model is loaded
        generator = None
        if request.verify:
            from negalora.device import choose_placement
            from negalora.generate import Generator
            from negalora.hashing import HashCache
            from negalora.models.loader import load_model

            model = load_model(args.model or plan.source.base_location, home, choose_placement(args.device))
            generator = Generator(model, HashCache(home.cache / "hashes.json"))
        result = run_export(store, plan, generator)
    finally:
        store.close()
    v = result.verification
    check = (
        f"verified: {v['modules_loaded']}/{v['modules_in_file']} modules, max pixel difference "
        f"{v['max_pixel_diff']}/255"
        if v.get("verified")
        else "not verified (--no-verify)"
    )
    _emit(
        args,
        {
            "run": result.run_id,
            "step": result.step,
            "format": result.fmt,
            "path": result.path,
            "sha256": result.sha256,
            "bytes": result.bytes,
            "model_card": result.model_card,
            "grid": result.grid,
            "export_id": result.export_id,
            "metadata": result.metadata,
            "hashes": result.hashes,
            "verification": v,
            "seconds": result.seconds,
            "comfyui_workflow": result.comfyui_workflow,
            "comfyui_api_workflow": result.comfyui_api_workflow,
            "files": list(result.files),
            "best_way": result.best_way,
            "measured_on": result.measured_on,
        },
        [
            f"{result.path}  ({result.fmt}, step {result.step}; {check})",
            f"  model card {result.model_card}",
            f"  ComfyUI workflow {result.comfyui_workflow} (API format: {result.comfyui_api_workflow})",
        ],
    )
    return 0


COMMANDS = {
    "gui": cmd_gui,
    "generate": cmd_generate,
    "make-wrong": cmd_make_wrong,
    "train": cmd_train,
    "compare": cmd_compare,
    "mark-best": cmd_mark_best,
    "rate": cmd_rate,
    "import": cmd_import,
    "list": cmd_list,
    "regenerate": cmd_regenerate,
    "export": cmd_export,
}


def _command(name: str):
    from negalora import cli_store

    return COMMANDS.get(name) or cli_store.COMMANDS[name]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args.command = "gui"
    for name in ("home", "model", "device"):  # `negalora --home X list …` means the same as `list --home X`
        top = getattr(args, f"gui_{name}", None)
        if top is not None and hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, top)
    try:
        return _command(args.command)(args)
    except NegaloraError as exc:
        print(f"negalora: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("negalora: cancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if os.environ.get("NEGALORA_DEBUG"):
            traceback.print_exc()
        print(f"negalora: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
