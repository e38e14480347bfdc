"""The large view of one image with its full recipe. Arrow keys move, X/P/U rate, Esc closes."""

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent, QPixmap
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QSizePolicy, QVBoxLayout

from negalora.pngmeta import format_parameters


class ImageViewer(QDialog):
    rate = Signal(str)  # reject | pick | clear
    step = Signal(int)  # -1 previous, +1 next

    KEYS = {Qt.Key.Key_X: "reject", Qt.Key.Key_P: "pick", Qt.Key.Key_U: "clear"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Image")
        self.resize(1100, 760)
        self.picture = QLabel()
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.picture.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.picture.setStyleSheet("background: #111214;")
        self.recipe = QPlainTextEdit()
        self.recipe.setReadOnly(True)
        self.recipe.setFixedWidth(340)
        self.title = QLabel()
        side = QVBoxLayout()
        side.addWidget(self.title)
        side.addWidget(self.recipe, 1)
        hint = QLabel("← → move · X reject · P pick · U clear · Esc close")
        hint.setStyleSheet("color: #8b8f96;")
        side.addWidget(hint)
        layout = QHBoxLayout(self)
        layout.addWidget(self.picture, 1)
        layout.addLayout(side)
        self._pixmap = QPixmap()

    def show_image(self, row: dict, recipe) -> None:
        self._pixmap = QPixmap(row["path"])
        verdict = row.get("verdict") or "unrated"
        self.title.setText(f"<b>#{row['id']}</b> · {verdict} · {row['width']}×{row['height']}")
        if recipe is not None:
            text = format_parameters(recipe) + f"\n\nModel: {recipe.model_location}\nModel sha256: {recipe.model_hash}"
        else:
            text = f"Imported: {row.get('original_name') or ''}\nsha256: {row['sha256']}"
        if row.get("reasons"):
            text += "\n\nReasons: " + ", ".join(row["reasons"])
        self.recipe.setPlainText(text)
        self._fit()

    def _fit(self) -> None:
        if not self._pixmap.isNull():
            size = self.picture.size()
            mode = (
                Qt.TransformationMode.FastTransformation  # keep small images crisp when enlarged
                if self._pixmap.width() < size.width() / 2
                else Qt.TransformationMode.SmoothTransformation
            )
            self.picture.setPixmap(self._pixmap.scaled(size, Qt.AspectRatioMode.KeepAspectRatio, mode))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in self.KEYS:
            self.rate.emit(self.KEYS[Qt.Key(key)])
        elif key in (Qt.Key.Key_Right, Qt.Key.Key_Down):
            self.step.emit(1)
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_Up):
            self.step.emit(-1)
        else:
            super().keyPressEvent(event)
