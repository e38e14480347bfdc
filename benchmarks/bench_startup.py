"""Wall time of the commands that neither render nor train, and of the window's first paint,
against ``python -c "import torch, diffusers"`` measured in the same run (each a fresh process,
the median of --repeat runs, interleaved so machine noise hits all alike).

Targets: each command <= 0.25x the import; the window painted offscreen <= 0.5x of it.

    python benchmarks/bench_startup.py [--repeat 5] [--json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND_TARGET = 0.25
WINDOW_TARGET = 0.5

WINDOW = r"""
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from pathlib import Path
from negalora.home import Home
from negalora.ui.app import make_app
from negalora.ui.main_window import MainWindow
app = make_app()
window = MainWindow(Home(Path(sys.argv[1])), start_worker=False)
window.resize(1440, 900)
window.show()
app.processEvents()
assert not window.grab().isNull()  # the first paint, as the artist would see it
assert "torch" not in sys.modules, "the window imported torch"
"""


def _seed(home: Path) -> int:
    """A home with one imported image; returns its id."""
    from PIL import Image

    src = home.parent / "seed.png"
    Image.new("RGB", (64, 64), "red").save(src)
    out = subprocess.run(
        [sys.executable, "-m", "negalora", "--home", str(home), "import", str(src), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)["imported"][0]["id"]


def _time(cmd: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        image_id = _seed(home)
        py, h = sys.executable, ["--home", str(home)]
        cases = {
            "import torch, diffusers": [py, "-c", "import torch, diffusers"],
            "negalora --version": [py, "-m", "negalora", "--version"],
            "negalora list images": [py, "-m", "negalora", *h, "list", "images"],
            "negalora rate ID reject": [py, "-m", "negalora", *h, "rate", str(image_id), "reject"],
            "window painted (offscreen)": [py, "-c", WINDOW, str(home)],
        }
        for cmd in cases.values():  # warm the file cache: every process then reads from memory
            _time(cmd)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, cmd in cases.items():
                times[name].append(_time(cmd))

    medians = {name: statistics.median(t) for name, t in times.items()}
    anchor = medians["import torch, diffusers"]
    rows, ok = [], True
    for name, seconds in medians.items():
        if name == "import torch, diffusers":
            continue
        target = WINDOW_TARGET if name.startswith("window") else COMMAND_TARGET
        ratio = seconds / anchor
        ok &= ratio <= target
        rows.append({"case": name, "seconds": round(seconds, 3), "ratio": round(ratio, 3), "target": target})
    if args.json:
        print(json.dumps({"import_torch_diffusers_s": round(anchor, 3), "rows": rows, "ok": ok}, indent=2))
    else:
        print(f"python -c 'import torch, diffusers': {anchor:.2f} s (median of {args.repeat})")
        for r in rows:
            mark = "ok" if r["ratio"] <= r["target"] else "MISSED"
            print(f"  {r['case']:<28} {r['seconds']:6.2f} s  {r['ratio']:.2f}x  (target <= {r['target']}x)  {mark}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
