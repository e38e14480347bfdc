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
    """Whether Qt would open the window with xcb and nothing to fall back to."""
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform:
        return all(p.split(":")[0] == "xcb" for p in platform.split(";") if p)
    # with no choice made, Qt 6 takes Wayland when WAYLAND_DISPLAY or XDG_SESSION_TYPE=wayland says so
    return not (env.get("WAYLAND_DISPLAY") or env.get("XDG_SESSION_TYPE", "") == "wayland")


def _qt_finds_it() -> bool:
    """Qt's own xcb plugin library, loaded as Qt loads it (through its RUNPATH): where the plain
    name cannot be found (NixOS, Guix, bundled apps), Qt may still find it."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("PySide6")
        if spec is None or not spec.submodule_search_locations:
            return False
        lib = next(iter(spec.submodule_search_locations))
        for name in ("Qt/lib/libQt6XcbQpa.so.6", "Qt/lib/libQt6XcbQpa.so"):
            path = os.path.join(lib, name)
            if os.path.exists(path):
                ctypes.CDLL(path)
                return True
    except OSError:
        return False
    return False


def loadable(name: str) -> bool:
    """Whether the dynamic loader finds the library (what Qt's plugin will ask it for)."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def window_problem(env=None, platform: str | None = None, loadable=None, qt_finds_it=None) -> str | None:
    """Why Qt could not open a window, in words with the fix; None when nothing is known to be wrong
    (``NEGALORA_NO_DISPLAY_CHECK=1`` skips the check)."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    loadable = globals()["loadable"] if loadable is None else loadable
    qt_finds_it = _qt_finds_it if qt_finds_it is None else qt_finds_it
    if not platform.startswith("linux"):
        return None
    if env.get("NEGALORA_NO_DISPLAY_CHECK"):
        return None
    if env.get("QT_QPA_PLATFORM") and not _would_use_xcb(env):
        return None  # a platform the user chose: Qt reports its own problems
    if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        return "no display to open the window on (DISPLAY is not set); " + HEADLESS
    if _would_use_xcb(env) and env.get("DISPLAY") and not loadable(XCB_CURSOR) and not qt_finds_it():
        return (
            "Qt needs the library libxcb-cursor0 to open a window on X11, and it is not installed. Install it ("
            + INSTALL
            + "), "
            + HEADLESS
        )
    return None
