"""The command line: the GUI's twin, for scripts, remote workstations and tests.

Exit codes: 0 success, 2 bad usage or bad input (one-line reason on stderr), 1 unexpected failure.

One module per command family, each with ``add_parsers(sub)`` (its subcommands' parsers) and its
``cmd_…(args)`` functions in ``COMMANDS``; what they share is in ``common.py``. A command that does
not render imports torch, diffusers and the like inside its function, never at the top of a module.
"""

import argparse
import os
import sys
import traceback

from negalora import __version__
from negalora.cli import compare, export, gallery, generate, gui, housekeeping, regenerate, train
from negalora.errors import NegaloraError

# in the order of `negalora --help`
FAMILIES = (gui, generate, train, compare, gallery, regenerate, export, housekeeping)
COMMANDS = {name: cmd for family in FAMILIES for name, cmd in family.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="negalora",
        description="Generate SDXL images, reject the bad ones, train a 'wrong' LoRA from them.",
    )
    parser.add_argument("--version", action="version", version=f"negalora {__version__}")
    gui.add_gui_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


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
        return COMMANDS[args.command](args)
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


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
