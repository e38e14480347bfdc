"""``negalora`` and ``negalora gui``: open the window (or render it offscreen to a PNG)."""

import argparse
from pathlib import Path

from negalora.errors import NegaloraError

PAGE_NAMES = ("generate", "gallery", "train", "compare", "export")


def add_gui_options(p: argparse.ArgumentParser, top_level: bool) -> None:
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


def add_parsers(sub) -> None:
    gui = sub.add_parser("gui", help="open the app (the same as no command)")
    add_gui_options(gui, top_level=False)


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


COMMANDS = {"gui": cmd_gui}
