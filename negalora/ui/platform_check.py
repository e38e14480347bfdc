"""Before Qt starts: whether it can open a window here. Qt 6.5+ needs libxcb-cursor0 for X11 and
aborts the process (no exception to catch) when it is missing, which many fresh Linux installs are;
negalora says which package to install instead. Imports neither Qt nor torch."""

import ctypes
import os
import sys

XCB_CURSOR = "libxcb-cursor.so.0"
INSTALL = (
    "Debian/Ubuntu: sudo apt install libxcb-cursor0; Fedora: sudo dnf install xcb-util-cursor; "
    "Arch: sudo pacman -S xcb-util-cursor"
)
HEADLESS = (
    "run without a window: the command line (negalora generate …, negalora train …), "
    "or QT_QPA_PLATFORM=offscreen negalora --screenshot shot.png"
)


def _would_use_xcb(env) -> bool:
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.split(":")[0].split(";")[0] == "xcb"
    # with no choice made, Qt takes Wayland in a Wayland session, X11 otherwise
    return not (env.get("WAYLAND_DISPLAY") and env.get("XDG_SESSION_TYPE", "") == "wayland")


def loadable(name: str) -> bool:
    """Whether the dynamic loader finds the library (what Qt's plugin will ask it for)."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def window_problem(env=None, platform: str | None = None, loadable=None) -> str | None:
    """Why Qt could not open a window, in words with the fix; None when nothing is known to be wrong."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    loadable = globals()["loadable"] if loadable is None else loadable
    if not platform.startswith("linux"):
        return None
    if env.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "minimal", "vnc", "eglfs", "linuxfb")):
        return None
    if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        return "no display to open the window on (DISPLAY is not set); " + HEADLESS
    if _would_use_xcb(env) and env.get("DISPLAY") and not loadable(XCB_CURSOR):
        return (
            "Qt needs the library libxcb-cursor0 to open a window on X11, and it is not installed. Install it ("
            + INSTALL
            + "), "
            + HEADLESS
        )
    return None
