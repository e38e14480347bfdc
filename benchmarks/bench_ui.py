"""Two figures for the desktop app, measured in one run, offscreen.

(a) The largest stall of the UI event loop while a generation job runs in the worker: a 5 ms
    timer probe records the longest gap between its ticks. Target <= 50 ms.
(b) Time to first paint of the gallery when the store holds 10,000 images: from creating the
    window to the gallery's first paint. Target <= 1 s.

    python benchmarks/bench_ui.py [--images 12] [--gallery 10000] [--json]
"""

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PySide6.QtCore import QElapsedTimer, QEvent, QObject, QTimer  # noqa: E402

from negalora.generate import GenerateRequest  # noqa: E402
from negalora.home import Home  # noqa: E402
from negalora.store import Store  # noqa: E402
from negalora.ui.app import make_app  # noqa: E402
from negalora.ui.main_window import MainWindow  # noqa: E402

STALL_TARGET_MS = 50.0
PAINT_TARGET_S = 1.0


def wait(app, predicate, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("benchmark step timed out")
        app.processEvents()
        time.sleep(0.002)


def measure_stall(app, home: Home, images: int) -> dict:
    window = MainWindow(home, start_worker=True, device="cpu")
    window.show()
    window.show_page("gallery")
    wait(app, lambda: window.jobs.state == "idle" and window.model_label.text() != "model: –", 180)
    done = []
    window.jobs.job_event.connect(lambda e: done.append(e) if e["type"] in ("finished", "failed") else None)
    clock = QElapsedTimer()
    gaps = []
    last = [0]

    def tick():
        now = clock.elapsed()
        gaps.append(now - last[0])
        last[0] = now

    probe = QTimer()
    probe.setInterval(5)
    probe.timeout.connect(tick)
    job = window.jobs.submit_generate("demo", [GenerateRequest(prompts=("a red circle",), count=images, seed=1)])
    clock.start()
    probe.start()
    t0 = time.monotonic()
    while not any(e.get("job") == job for e in done):
        app.processEvents()
        time.sleep(0.001)
    elapsed = time.monotonic() - t0
    probe.stop()
    window.close()
    status = [e for e in done if e.get("job") == job][0]
    return {
        "job_status": status.get("status", status["type"]),
        "job_seconds": round(elapsed, 2),
        "ticks": len(gaps),
        "max_stall_ms": max(gaps) if gaps else None,
        "target_ms": STALL_TARGET_MS,
    }


def fill_store(home: Home, n: int) -> None:
    """n distinct tiny PNGs and their rows, written in bulk (the benchmark measures the gallery)."""
    from PIL import Image

    Store(home).close()
    conn = sqlite3.connect(home.db_path)
    rows = []
    for i in range(n):
        color = (i * 37 % 256, i * 91 % 256, i * 13 % 256)
        path = home.images / f"{i % 256:02x}" / f"bench{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), color).save(path)
        rows.append((f"{i:064x}", str(path.relative_to(home.root)), 64, 64, "imported", f"bench{i}.png", "now"))
    with conn:
        conn.executemany(
            "INSERT INTO images (sha256, path, width, height, source, original_name, created) VALUES (?,?,?,?,?,?,?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO ratings (image_id, verdict, reasons, updated) VALUES (?, 'reject', '[]', 'now')",
            [(i,) for i in range(1, n + 1, 3)],
        )
    conn.close()


class _FirstPaint(QObject):
    def __init__(self):
        super().__init__()
        self.at = None

    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Paint and self.at is None:
            self.at = time.perf_counter()
        return False


def measure_first_paint(app, home: Home) -> dict:
    t0 = time.perf_counter()
    window = MainWindow(home, start_worker=False)
    probe = _FirstPaint()
    window.gallery_page.view.viewport().installEventFilter(probe)
    window.show_page("gallery")
    window.show()
    wait(app, lambda: probe.at is not None, 30)
    seconds = probe.at - t0
    rows = window.gallery_model.rowCount()
    counts = window.gallery_page.buttons["all"].text()
    window.close()
    return {"first_paint_s": round(seconds, 3), "rows_loaded": rows, "all_button": counts, "target_s": PAINT_TARGET_S}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12, help="images in the generation job (default 12)")
    parser.add_argument("--gallery", type=int, default=10_000, help="images in the store for (b)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    app = make_app()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        stall = measure_stall(app, Home(Path(a)), args.images)
        big = Home(Path(b))
        fill_store(big, args.gallery)
        paint = measure_first_paint(app, big)
    ok = (stall["max_stall_ms"] or 1e9) <= STALL_TARGET_MS and paint["first_paint_s"] <= PAINT_TARGET_S
    result = {"stall": stall, "gallery": {"images": args.gallery, **paint}, "ok": ok}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"(a) largest UI stall during a {args.images}-image job "
            f"({stall['job_seconds']} s, {stall['ticks']} ticks): "
            f"{stall['max_stall_ms']} ms (target <= {STALL_TARGET_MS:g} ms)\n"
            f"(b) first paint of a {args.gallery}-image gallery: {paint['first_paint_s']} s "
            f"(target <= {PAINT_TARGET_S:g} s; {paint['rows_loaded']} rows loaded, {paint['all_button']})\n"
            f"{'OK' if ok else 'OVER TARGET'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
