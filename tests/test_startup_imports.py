"""Commands that neither render nor train start without torch or diffusers (a script calls `rate`
and `list` hundreds of times; `--version` and `--help` should answer at once), and the window paints
before either is imported: only the worker renders."""

import json
import subprocess
import sys

from PIL import Image

PROBE = r"""
import json, sys
from negalora.cli import build_parser, main
parser = build_parser()
run, parse = json.loads(sys.argv[1])
for args in run:
    code = main(args)
    assert code == 0, (args, code)
for args in parse:
    try:
        parser.parse_args(args)
    except SystemExit:
        pass
print(json.dumps({"torch": "torch" in sys.modules, "diffusers": "diffusers" in sys.modules}))
"""

WINDOW = r"""
import json, os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from pathlib import Path
from negalora.home import Home
from negalora.ui.app import make_app
from negalora.ui.main_window import MainWindow
app = make_app()
window = MainWindow(Home(Path(sys.argv[1])), start_worker=False)
window.show()
app.processEvents()
assert not window.grab().isNull()
for page in ("generate", "gallery", "train", "compare"):
    window.show_page(page)
    app.processEvents()
print(json.dumps({"torch": "torch" in sys.modules, "diffusers": "diffusers" in sys.modules}))
"""


def test_non_rendering_commands_never_import_torch(tmp_path):
    home = str(tmp_path / "home")
    src = tmp_path / "a.png"
    Image.new("RGB", (16, 16), "red").save(src)
    commands = [
        ["import", str(src), "--home", home],
        ["list", "images", "--home", home],
        ["list", "runs", "--home", home],
        ["rate", "1", "reject", "--reason", "hands", "--home", home],
        ["check", "--home", home],
        ["delete", "1", "--home", home],
    ]
    # parsed, not run: they fail for want of a run or a backup, but must not pay for torch to say so
    parsed = [
        ["mark-best", "RUN", "--step", "4", "--home", home],
        ["mark-best", "RUN", "--scale", "0.5", "--home", home],
        ["restore-backup", "--home", home],
        *([c, "--help"] for c in ("generate", "make-wrong", "train", "compare", "export", "regenerate")),
    ]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([commands, parsed])], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"torch": False, "diffusers": False}
    for flag in ("--version", "--help"):
        probe = (
            f"import sys\nfrom negalora.cli import main\ntry:\n    main([{flag!r}])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules or 'diffusers' in sys.modules)"
        )
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert run.stdout.strip().splitlines()[-1] == "False", (flag, run.stderr)


def test_the_window_paints_without_torch(tmp_path):
    from helpers_ui import seed_home

    from negalora.home import Home

    seed_home(Home(tmp_path / "home"))
    out = subprocess.run(
        [sys.executable, "-c", WINDOW, str(tmp_path / "home")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"torch": False, "diffusers": False}
