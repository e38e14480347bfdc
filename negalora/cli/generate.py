"""``negalora generate`` and ``negalora make-wrong``: render images into the store."""

import sys

from negalora.api import DEFAULT_STRENGTH
from negalora.cli.common import BATCH_HELP, add_common, batch_size, emit, load_for_generation, parse_size
from negalora.errors import NegaloraError
from negalora.lora_passes import DEFAULT, LORA_PASSES
from negalora.schedulers import DEFAULT_SCHEDULER, SCHEDULERS


def add_parsers(sub) -> None:
    g = sub.add_parser("generate", help="generate images into the store")
    g.add_argument(
        "prompt",
        nargs="*",
        help="one or more prompts (Compel syntax: (word)++, (word)1.3, .blend(), .and()); with --init-image "
        "the default is the prompt that image was made with",
    )
    g.add_argument("--negative", default="", metavar="N", help="negative prompt")
    g.add_argument(
        "--seed", type=int, metavar="S", help="first seed; image k gets seed S+k (default: random, always stored)"
    )
    g.add_argument("--count", type=int, default=1, metavar="K", help="images per prompt (default 1)")
    g.add_argument("--batch-size", type=batch_size, default=None, metavar="N|auto", help=BATCH_HELP)
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
        help="guidance passes the LoRA acts on: both (as A1111/ComfyUI), negative (the unconditional pass "
        f"only; default {DEFAULT}) or positive (the prompt's pass only: a LoRA of what you like)",
    )
    g.add_argument(
        "--negative-lora",
        metavar="FILE",
        help="a second LoRA, on the negative pass only, beside --lora (e.g. `right` on the positive pass "
        "and `wrong` here)",
    )
    g.add_argument("--negative-lora-scale", type=float, default=1.0, metavar="X", help="its strength (default 1)")
    g.add_argument(
        "--init-image",
        metavar="ID|FILE",
        help="img2img: re-render a stored image (its id) or an image file (checked and stored first); "
        "the size defaults to the image's own",
    )
    g.add_argument(
        "--strength",
        type=float,
        default=DEFAULT_STRENGTH,
        metavar="S",
        help=f"img2img denoising strength, 0-1: the share of the steps re-run (A1111's; default {DEFAULT_STRENGTH})",
    )
    g.add_argument("--device", metavar="D", help="cpu, cuda or mps (default: the best available)")
    add_common(g)

    w = sub.add_parser("make-wrong", help="generate Woolf's 'wrong' set (defect keywords, CFG 8-13) as rejects")
    w.add_argument("--count", type=int, default=78, metavar="K", help="images (default 78)")
    w.add_argument("--batch-size", type=batch_size, default=None, metavar="N|auto", help=BATCH_HELP)
    w.add_argument("--seed", type=int, default=0, metavar="S", help="first seed (default 0)")
    w.add_argument("--steps", type=int, default=25, metavar="N")
    w.add_argument("--size", metavar="WxH")
    w.add_argument("--scheduler", default=DEFAULT_SCHEDULER, metavar="NAME")
    w.add_argument("--model", metavar="M")
    w.add_argument("--device", metavar="D")
    add_common(w)


def cmd_generate(args) -> int:
    from negalora.generate import GenerateRequest, check_request

    width, height = parse_size(args.size)
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
        negative_lora=args.negative_lora,
        negative_lora_scale=args.negative_lora_scale,
        refiner_switch=args.refiner_switch,
        batch_size=args.batch_size,
        init_image=args.init_image or "",
        strength=args.strength,
    )
    check_request(request)  # before anything is loaded or written
    if request.init_image:
        check_init_image(request.init_image)

    from negalora.cancel import CancelToken
    from negalora.generate import Generator, generate_to_store, with_init_image
    from negalora.store import Store

    home, model, generator = load_for_generation(args, Generator)
    if not request.init_image:
        generator.plan(request)  # model-dependent checks (size, LoRA file) before the store is touched
    with Store(home) as store:
        if request.init_image:
            request = with_init_image(store, request)  # a file is stored first, to be re-rendered again
            generator.plan(request)
        bar = None
        if not args.json and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=len(request.prompts) * args.count, unit="img", file=sys.stderr)
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
            **({"init_image": r.init_image, "strength": r.strength} if r.init_image else {}),
        }
        for s, r in results
    ]
    emit(
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
    width, height = parse_size(args.size)
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
    home, model, generator = load_for_generation(args, Generator)
    for r in requests:
        generator.plan(r)
    from negalora.store import Store

    made = []
    with Store(home) as store:

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

        # one job: images of the same CFG render in batches
        generate_to_store(generator, store, requests, on_image=on_image)
    emit(
        args, {"model": model.name, "rejected": made}, [f"#{m['id']}  cfg {m['guidance']:g}  {m['path']}" for m in made]
    )
    return 0


COMMANDS = {"generate": cmd_generate, "make-wrong": cmd_make_wrong}


def check_init_image(spec: str) -> None:
    """A file given as an init image is checked before anything loads (an id is checked in the store)."""
    import re
    from pathlib import Path

    from negalora.image_files import ImageRefused, probe

    path = Path(spec).expanduser()
    if re.fullmatch(r"#?\d+", spec.strip()) and not path.is_file():
        return
    try:
        probe(path)
    except ImageRefused as exc:
        raise NegaloraError(f"{path}: refused as an init image: {exc.reason}") from exc
