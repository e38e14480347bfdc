"""What the commands share: the common options, the argument types, the one ``--json`` / text
printer, and loading the model a command renders with. Torch-free: the model loading imports
inside its functions."""

import argparse
import json
import os

from negalora.errors import NegaloraError

DEFAULT_MODEL = "demo"

BATCH_HELP = (
    "images per pipeline call, as A1111's batch size: a number, or auto (the default: as many as the device, "
    "the image size and free memory suit; 1 where a batch would not fit). Every image keeps its own seed"
)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", metavar="DIR", help="data directory (default: $NEGALORA_HOME or the user-data folder)")
    p.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")


def emit(args, payload: dict, lines: list[str]) -> None:
    """The one result printer of every command: ``payload`` as JSON with --json, else ``lines``."""
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        for line in lines:
            print(line)


# argparse names a type function in its message ("invalid _positive_int value: 'x'"), so this one
# keeps the name it has always had.
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


positive_int = _positive_int


def batch_size(text: str) -> int | None:
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


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise NegaloraError(f"size {text!r}: expected WxH, e.g. 1024x1024") from None


def float_list(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise NegaloraError(f"{what} {text!r}: expected numbers separated by commas") from None


def model_spec(args, home) -> str:
    return args.model or os.environ.get("NEGALORA_MODEL") or home.settings().get("model") or DEFAULT_MODEL


def load_model_from_args(args):
    """The home and the model that --home, --model (--vae, --refiner) and --device name."""
    from negalora.device import choose_placement
    from negalora.home import resolve_home
    from negalora.models.loader import load_model

    home = resolve_home(args.home)
    placement = choose_placement(args.device)
    model = load_model(
        model_spec(args, home), home, placement, vae=getattr(args, "vae", None), refiner=getattr(args, "refiner", None)
    )
    return home, model


def load_for_generation(args, generator_cls):
    from negalora.hashing import HashCache

    home, model = load_model_from_args(args)
    return home, model, generator_cls(model, HashCache(home.cache / "hashes.json"))
