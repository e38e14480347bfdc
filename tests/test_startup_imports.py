"""Commands that neither render nor train start without torch or diffusers (a script calls `rate`
and `list` hundreds of times; `--version` and `--help` should answer at once)."""

import json
import subprocess
import sys

from PIL import Image

PROBE = r"""
import json, sys
from negalora.cli import build_parser, main
parser = build_parser()
for args in json.loads(sys.argv[1]):
    code = main(args)
    assert code == 0, (args, code)
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
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True, timeout=120
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
