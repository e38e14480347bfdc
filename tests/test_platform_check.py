"""Before Qt starts, negalora finds what would make it abort (no display, no libxcb-cursor0 for
X11) and says what to install or how to run headless, instead of Qt's platform-plugin abort."""

import pytest

from negalora.cli import main
from negalora.ui import platform_check as pc


def _missing(name):
    return name != pc.XCB_CURSOR


def _nowhere():
    return False


def test_x11_without_libxcb_cursor_names_the_package_and_the_headless_way():
    problem = pc.window_problem({"DISPLAY": ":0"}, "linux", loadable=_missing, qt_finds_it=_nowhere)
    assert "libxcb-cursor0" in problem and "sudo apt install libxcb-cursor0" in problem
    assert "xcb-util-cursor" in problem and "QT_QPA_PLATFORM=offscreen" in problem
    assert pc.window_problem({"DISPLAY": ":0"}, "linux", loadable=lambda n: True) is None
    assert pc.window_problem({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, "linux", _missing, _nowhere)
    # where Qt's own plugin resolves it through its RUNPATH (NixOS, bundled apps), nothing is said
    assert pc.window_problem({"DISPLAY": ":0"}, "linux", loadable=_missing, qt_finds_it=lambda: True) is None
    assert pc.window_problem({"DISPLAY": ":0", "NEGALORA_NO_DISPLAY_CHECK": "1"}, "linux", _missing, _nowhere) is None


@pytest.mark.parametrize(
    "env",
    [
        {"QT_QPA_PLATFORM": "offscreen"},
        {"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"},
        {"DISPLAY": ":0", "QT_QPA_PLATFORM": "wayland"},
        {"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0"},  # WSLg: no XDG_SESSION_TYPE, Qt still takes Wayland
        {"QT_QPA_PLATFORM": "wayland"},  # libwayland falls back to wayland-0
        {"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb;wayland"},  # a list Qt falls back through
    ],
)
def test_no_xcb_no_complaint(env):
    assert pc.window_problem(env, "linux", loadable=_missing, qt_finds_it=_nowhere) is None
    assert pc.window_problem({}, "darwin", loadable=_missing, qt_finds_it=_nowhere) is None


def test_no_display_says_how_to_run_headless():
    problem = pc.window_problem({}, "linux", loadable=lambda n: True)
    assert "DISPLAY is not set" in problem and "negalora generate" in problem


def test_the_app_refuses_before_qt_starts(monkeypatch, tmp_path, capsys):
    import negalora.ui.app

    monkeypatch.setattr(negalora.ui.app, "run_app", lambda *a, **k: pytest.fail("Qt was started"))
    monkeypatch.setattr(pc, "loadable", _missing)
    monkeypatch.setattr(pc, "_qt_finds_it", _nowhere)
    monkeypatch.setattr(pc.sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    for name in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "NEGALORA_NO_DISPLAY_CHECK"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--home", str(tmp_path), "gui"]) == 2
    err = capsys.readouterr().err
    assert "libxcb-cursor0" in err and "sudo apt install libxcb-cursor0" in err
