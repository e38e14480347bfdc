"""Compare and Export: their engines arrive in later milestones. Until then each page says what it
will do, so the window's shape is final from the start."""

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

TEXT = {
    "compare": (
        "Compare",
        "Renders the same seeds three ways — base, base with <b>wrong</b> as the negative, and "
        "LoRA with <b>wrong</b> as the negative — with sweeps, an A/B viewer and blind votes.",
    ),
    "export": (
        "Export",
        "Writes the LoRA for A1111, ComfyUI and diffusers, verified by reloading it, with honest "
        "metadata and a model card.",
    ),
}


class LaterPage(QWidget):
    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.name = name
        title, self._body = TEXT[name]
        self.title = QLabel(f"<h2>{title}</h2>")
        self.body = QLabel()
        self.body.setWordWrap(True)
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.note = QLabel("Not built yet: this page is filled by a coming release.")
        self.note.setStyleSheet("color: #8b8f96;")
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.body)
        layout.addWidget(self.note)
        layout.addStretch(1)
        self.body.setText(self._body)
