"""Start the desktop app, or render it offscreen to a PNG (``--screenshot``)."""

import os
import sys
from pathlib import Path

from negalora.home import Home


def _apply_theme(app) -> None:
    from PySide6.QtGui import QColor, QPalette

    app.setStyle("Fusion")
    p = QPalette()
    colors = {
        QPalette.ColorRole.Window: "#2b2d31",
        QPalette.ColorRole.WindowText: "#e6e6e6",
        QPalette.ColorRole.Base: "#1e1f22",
        QPalette.ColorRole.AlternateBase: "#2b2d31",
        QPalette.ColorRole.Text: "#e6e6e6",
        QPalette.ColorRole.Button: "#35373c",
        QPalette.ColorRole.ButtonText: "#e6e6e6",
        QPalette.ColorRole.Highlight: "#3b4a63",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.ToolTipBase: "#1e1f22",
        QPalette.ColorRole.ToolTipText: "#e6e6e6",
        QPalette.ColorRole.PlaceholderText: "#7d8088",
    }
    for role, color in colors.items():
        p.setColor(role, QColor(color))
    app.setPalette(p)
    app.setStyleSheet(
        "QPushButton { padding: 5px 12px; border: 1px solid #4a4d55; border-radius: 4px; background: #35373c; }"
        "QPushButton:hover { background: #3f4248; }"
        "QPushButton:checked { background: #3b4a63; border-color: #7aa2f7; color: white; }"
        "QPushButton:disabled { color: #6b6f76; }"
    )


def make_app():
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("negalora")
    _apply_theme(app)
    return app


def run_app(home: Home, *, model: str | None, device: str | None, screenshot: Path | None, page: str | None) -> int:
    if screenshot is not None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = make_app()
    from negalora.errors import NegaloraError
    from negalora.ui.main_window import MainWindow
    from negalora.ui.startup import ask_restore, open_database

    try:
        restored = open_database(home, ask=ask_restore if screenshot is None else lambda exc: False)
    except NegaloraError as exc:  # damaged and declined, or no sound backup to restore
        print(f"negalora: error: {exc}", file=sys.stderr)
        return 2
    window = MainWindow(home, device=device, model=model, start_worker=screenshot is None)
    if restored:
        window.statusBar().showMessage(restored, 30000)
    if page:
        window.show_page(page)
    if screenshot is None:
        window.show()
        return app.exec()
    return take_screenshot(app, window, screenshot)


def take_screenshot(app, window, path: Path) -> int:
    from PySide6.QtCore import QSize

    from negalora.device import choose_placement

    window.resize(QSize(1440, 900))
    window.device_label.setText(f"device: {choose_placement().label}")
    window.model_label.setText(f"model: {window.generate_page.model_spec()}")
    window.show()
    from PySide6.QtCore import QThreadPool

    for _ in range(5):
        app.processEvents()
        window.thumbs.wait_idle(3000)
        QThreadPool.globalInstance().waitForDone(3000)  # pages that prepare a view in the background
    app.processEvents()
    image = window.grab()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = image.save(str(path), "PNG")
    window.jobs.client.proc = None
    window.close()
    return 0 if ok else 1
