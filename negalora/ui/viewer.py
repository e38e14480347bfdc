"""The large view of one image with its full recipe. Arrow keys move, X/P/U rate, R re-renders, Esc closes.
A re-render names the image it was made from (a link that opens it) and compares itself with it."""

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
)

from negalora.pngmeta import format_parameters


class ImageViewer(QDialog):
    rate = Signal(str)  # reject | pick | clear
    step = Signal(int)  # -1 previous, +1 next
    rerender = Signal()  # re-render the image on screen (img2img)
    compare_source = Signal(int)  # the source's id: show it beside the image on screen in the A/B viewer
    open_source = Signal(int)  # the source's id: show it here

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
        self.lineage = QLabel()  # "Re-render of #N (strength S)" for an img2img result
        self.lineage.setWordWrap(True)
        self.lineage.setTextFormat(Qt.TextFormat.RichText)
        self.lineage.setStyleSheet("color: #b8bcc8;")
        self.lineage.linkActivated.connect(lambda link: self.open_source.emit(int(link)))
        self.lineage.setVisible(False)
        self.source_id: int | None = None
        self.rerender_button = QPushButton("Re-render… (R)")
        self.rerender_button.setToolTip("Render this image again from itself (img2img), e.g. through the LoRA")
        self.rerender_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the keys stay with the view
        self.rerender_button.clicked.connect(self.rerender.emit)
        self.compare_button = QPushButton("Compare with source")
        self.compare_button.setToolTip("The source and this re-render side by side in the A/B viewer")
        self.compare_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.compare_button.clicked.connect(self._compare)
        self.compare_button.setVisible(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.rerender_button)
        buttons.addWidget(self.compare_button)
        buttons.addStretch(1)
        side = QVBoxLayout()
        side.addWidget(self.title)
        side.addWidget(self.lineage)
        side.addWidget(self.recipe, 1)
        side.addLayout(buttons)
        hint = QLabel("← → move · X reject · P pick · U clear · R re-render · Esc close")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: #8b8f96;")
        side.addWidget(hint)
        layout = QHBoxLayout(self)
        layout.addWidget(self.picture, 1)
        layout.addLayout(side)
        self._pixmap = QPixmap()

    def show_image(self, row: dict, recipe, source_id: int | None = None) -> None:
        """``source_id``: the stored image a re-render (a recipe with an init image) was made from."""
        self._pixmap = QPixmap(row["path"])
        verdict = row.get("verdict") or "unrated"
        self.title.setText(f"<b>#{row['id']}</b> · {verdict} · {row['width']}×{row['height']}")
        self._show_lineage(recipe, source_id)
        if recipe is not None:
            text = format_parameters(recipe) + f"\n\nModel: {recipe.model_location}\nModel sha256: {recipe.model_hash}"
        else:
            text = f"Imported: {row.get('original_name') or ''}\nsha256: {row['sha256']}"
        if row.get("reasons"):
            text += "\n\nReasons: " + ", ".join(row["reasons"])
        self.recipe.setPlainText(text)
        self._fit()

    def _show_lineage(self, recipe, source_id: int | None) -> None:
        rerendered = recipe is not None and bool(recipe.init_image)
        self.source_id = source_id if rerendered else None
        if recipe is not None and rerendered:
            strength = f"strength {recipe.strength:g}"
            if self.source_id is not None:
                link = f'<a href="{self.source_id}" style="color: #7aa2f7;">#{self.source_id}</a>'
                self.lineage.setText(f"Re-render of {link} ({strength})")
            else:
                self.lineage.setText(f"Re-render of an image no longer in the store ({strength})")
        self.lineage.setVisible(rerendered)
        self.compare_button.setVisible(self.source_id is not None)

    def _compare(self) -> None:
        if self.source_id is not None:
            self.compare_source.emit(self.source_id)

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
        elif key == Qt.Key.Key_R and not event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier:
            self.rerender.emit()
        elif key in (Qt.Key.Key_Right, Qt.Key.Key_Down):
            self.step.emit(1)
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_Up):
            self.step.emit(-1)
        else:
            super().keyPressEvent(event)
