"""A/B viewer for two images of a fixed-seed comparison: side by side, flip, or wipe, under one shared zoom and pan.
``ABDialog`` shows any two images in it in a window of their own (a re-render beside its source).

The view transform belongs to image A: ``zoom`` is screen pixels (device-independent) per pixel of A, and ``pan`` is
the point of A shown at the centre of every pane. B is always drawn into A's rectangle, so a B of another size is
scaled to A's size and both panes show the same region of the picture.
"""

import math
from pathlib import Path

from PySide6.QtCore import QPointF, QRect, QRectF, QSize, QSizeF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPen, QPixmap, QPolygonF, QWheelEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

MODES = ("side", "flip", "wipe")
BACKGROUND = QColor("#111214")
GAP = 2  # px of background between the side-by-side panes
GRAB = 6  # px either side of the wipe divider that pick it up
MAX_ZOOM = 64.0
WHEEL_STEP = 1.25  # zoom factor per wheel notch
TOOLBAR_STYLE = (
    "QToolButton { padding: 2px 8px; border: 1px solid #4a4d55; border-radius: 3px; background: #35373c;"
    " color: #e6e6e6; }"
    "QToolButton:hover { background: #3f4248; }"
    "QToolButton:checked { background: #3b4a63; border-color: #7aa2f7; color: white; }"
    "QLabel { color: #8b8f96; }"
)
WIPE_HELP = "Wipe (W): A left of the divider, B right. Drag the divider, Shift+click to put it there, or use the slider"


def _load(image: QImage | str | Path) -> QImage:
    loaded = image if isinstance(image, QImage) else QImage(str(image))
    if loaded.isNull():
        raise ValueError(f"cannot read image: {image}")
    return loaded


class ABViewer(QWidget):
    """Two images under one view. Keys: S side, F flip, W wipe, Space A/B in flip, 1 one-to-one, 0 fit. The wheel
    zooms around the cursor, a left or middle drag pans; in wipe mode a drag on the divider, or Shift+click, moves it.

    Labels are drawn in the top corner of each pane as "A · label". With ``set_labels_visible(False)`` only the
    letter is drawn, so a blind vote can still name the image it prefers without learning which one it is.
    """

    flipped = Signal(str)  # "a" | "b": the image flip mode now shows
    mode_changed = Signal(str)  # "side" | "flip" | "wipe"

    KEYS = {Qt.Key.Key_S: "side", Qt.Key.Key_F: "flip", Qt.Key.Key_W: "wipe"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)  # the cursor tells the divider from the picture
        self.setMinimumSize(240, 160)
        self._pixmaps: tuple[QPixmap, QPixmap] | None = None
        self._labels = ("", "")
        self._labels_visible = True
        self._mode = "side"
        self._showing = "a"
        self._wipe = 0.5
        self._fit = True  # while fitted, zoom and pan follow the pane size
        self._zoom = 1.0
        self._pan = QPointF()
        self._drag: str | None = None  # "pan" | "wipe" while a button is held
        self._last = QPointF()
        self._scaled: dict[int, tuple[QSize, QPixmap]] = {}  # area-averaged copies for zoomed-out drawing

        bar = QWidget()
        bar.setStyleSheet(TOOLBAR_STYLE)
        bar.setCursor(Qt.CursorShape.ArrowCursor)
        row = QHBoxLayout(bar)
        row.setContentsMargins(4, 4, 4, 4)
        row.setSpacing(2)
        self.mode_group = QButtonGroup(self)
        self.buttons: dict[str, QToolButton] = {}
        tips = {"side": "Side by side (S)", "flip": "Flip (F): Space shows the other image", "wipe": WIPE_HELP}
        for name, text in zip(MODES, ("Side", "Flip", "Wipe"), strict=True):
            button = self._tool_button(text, tips[name], lambda _=False, n=name: self.set_mode(n))
            button.setCheckable(True)
            self.mode_group.addButton(button)
            self.buttons[name] = button
            row.addWidget(button)
        self.buttons["side"].setChecked(True)
        row.addSpacing(10)
        self.fit_button = self._tool_button("Fit", "Fit the image to the pane (0)", self.fit)
        self.actual_button = self._tool_button("1:1", "One image pixel per screen pixel (1)", self.actual_size)
        row.addWidget(self.fit_button)
        row.addWidget(self.actual_button)
        self.zoom_label = QLabel()
        self.zoom_label.setMinimumWidth(self.zoom_label.fontMetrics().horizontalAdvance("fit 1000%") + 8)
        self.zoom_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        row.addWidget(self.zoom_label)
        hint = QLabel("S / F / W mode · Space A⇄B · wheel zoom · drag pan")
        hint.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        hint.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # clipped, never widens us
        row.addWidget(hint, 1)

        # A placeholder that reserves the image area in the layout; this widget paints it and takes its mouse input.
        self.area = QWidget()
        self.area.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.area.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 1000)
        self.slider.setValue(round(self._wipe * 1000))
        self.slider.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Space and the mode keys stay with the viewer
        self.slider.setToolTip(WIPE_HELP)
        self.slider.setCursor(Qt.CursorShape.ArrowCursor)
        self.slider.setVisible(False)
        self.slider.valueChanged.connect(lambda value: self.set_wipe(value / 1000))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(bar)
        layout.addWidget(self.area, 1)
        layout.addWidget(self.slider)
        self._changed()

    def _tool_button(self, text: str, tip: str, slot) -> QToolButton:
        button = QToolButton()
        button.setText(text)
        button.setToolTip(tip)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Space must flip, not press the last clicked button
        button.clicked.connect(slot)
        return button

    # -- read-only state ------------------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def zoom(self) -> float:
        return self._fit_zoom() if self._fit else self._zoom

    @property
    def pan(self) -> QPointF:
        if self._fit and self._pixmaps is not None:
            return QRectF(self._pixmaps[0].rect()).center()
        return QPointF(self._pan)

    @property
    def wipe(self) -> float:
        return self._wipe

    @property
    def showing(self) -> str:
        return self._showing

    @property
    def labels_visible(self) -> bool:
        return self._labels_visible

    def panes(self) -> list[QRect]:
        """The image panes in widget coordinates: two of equal size in side mode, else one."""
        area = self.area.geometry()
        if self._mode != "side":
            return [area]
        width = (area.width() - GAP) // 2
        return [
            QRect(area.x(), area.y(), width, area.height()),
            QRect(area.x() + area.width() - width, area.y(), width, area.height()),
        ]

    # -- commands -------------------------------------------------------------------------------------------------

    def set_images(self, a: QImage | str | Path, b: QImage | str | Path, a_label: str = "", b_label: str = "") -> None:
        """Show a new pair. A pair of the same size as before keeps the view, so one detail can be followed across
        seeds; another size starts fitted."""
        images = _load(a), _load(b)
        same_size = self._pixmaps is not None and self._pixmaps[0].size() == images[0].size()
        self._pixmaps = QPixmap.fromImage(images[0]), QPixmap.fromImage(images[1])
        self._labels = a_label, b_label
        self._scaled.clear()
        if not same_size:
            self._fit = True
        self._changed()

    def set_labels_visible(self, visible: bool) -> None:
        self._labels_visible = visible
        self.update()

    def set_mode(self, name: str) -> None:
        if name not in MODES:
            raise ValueError(f"unknown mode {name!r}; expected one of {MODES}")
        self.buttons[name].setChecked(True)
        if name == self._mode:
            return
        self._mode = name
        self.slider.setVisible(name == "wipe")
        layout = self.layout()
        assert layout is not None  # set in __init__
        layout.activate()  # the panes take their new size now, not at the next event loop turn
        self.mode_changed.emit(name)
        self._changed()

    def set_wipe(self, position: float) -> None:
        self._wipe = min(max(position, 0.0), 1.0)
        self.slider.blockSignals(True)
        self.slider.setValue(round(self._wipe * 1000))
        self.slider.blockSignals(False)
        self.update()

    def flip(self) -> None:
        """Show the other image in flip mode."""
        self._showing = "b" if self._showing == "a" else "a"
        self.flipped.emit(self._showing)
        self.update()

    def fit(self) -> None:
        self._fit = True
        self._changed()

    def actual_size(self) -> None:
        self.set_view(1.0, self.pan)

    def set_view(self, zoom: float, pan: QPointF) -> None:
        """Zoom (screen pixels per pixel of A) and the point of A at the pane centre; leaves fit."""
        self._fit = False
        self._zoom = self._clamped_zoom(zoom)
        self._pan = self._clamped_pan(pan)
        self._changed()

    # -- view transform ---------------------------------------------------------------------------------------------

    def _fit_zoom(self) -> float:
        if self._pixmaps is None:
            return 1.0
        pane, size = self.panes()[0], self._pixmaps[0].size()
        return max(min(pane.width() / size.width(), pane.height() / size.height()), 1e-3)

    def _clamped_zoom(self, zoom: float) -> float:
        return min(max(zoom, min(self._fit_zoom(), 1.0) / 4), MAX_ZOOM)

    def _clamped_pan(self, pan: QPointF) -> QPointF:
        # the pane centre stays on the image, so it cannot be lost off screen
        size = self._pixmaps[0].size() if self._pixmaps is not None else QSize()
        return QPointF(min(max(pan.x(), 0.0), size.width()), min(max(pan.y(), 0.0), size.height()))

    def _hold(self) -> None:
        """Leave fit keeping what is on screen, before a zoom or pan relative to it."""
        if self._fit:
            self._zoom, self._pan, self._fit = self.zoom, self.pan, False

    def _loaded(self) -> tuple[QPixmap, QPixmap]:
        """The pair on screen, for the drawing and view code that runs only once set_images has given one."""
        assert self._pixmaps is not None, "no images yet"
        return self._pixmaps

    def _image_rect(self, pane: QRect) -> QRectF:
        centre, zoom, size = QRectF(pane).center(), self.zoom, self._loaded()[0].size()
        top_left = centre - self.pan * zoom
        return QRectF(top_left.x(), top_left.y(), size.width() * zoom, size.height() * zoom)

    def _zoom_at(self, pos: QPointF, zoom: float) -> None:
        panes = self.panes()
        pane = next((p for p in panes if QRectF(p).contains(pos)), panes[0])
        offset = pos - QRectF(pane).center()
        self._hold()
        point = self._pan + offset / self._zoom  # the image point under the cursor stays under it
        self._zoom = self._clamped_zoom(zoom)
        self._pan = self._clamped_pan(point - offset / self._zoom)
        self._changed()

    def _changed(self) -> None:
        if self._pixmaps is None:
            self.zoom_label.setText("")
        else:
            self.zoom_label.setText(f"fit {self.zoom:.0%}" if self._fit else f"{self.zoom:.0%}")
        self.update()

    def _divider_x(self) -> float:
        pane = self.panes()[0]
        return pane.x() + self._wipe * pane.width()

    # -- painting ---------------------------------------------------------------------------------------------------

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        area = self.area.geometry()
        p.fillRect(area, BACKGROUND)
        if self._pixmaps is None:
            p.setPen(QColor("#7d8088"))
            p.drawText(area, Qt.AlignmentFlag.AlignCenter, "No images")
            return
        font = p.font()
        font.setPointSizeF(font.pointSizeF() * 0.9)
        p.setFont(font)
        panes = self.panes()
        if self._mode == "side":
            for index, pane in enumerate(panes):
                self._draw_image(p, pane, index, QRectF(pane))
                self._draw_label(p, pane, index)
        elif self._mode == "flip":
            index = 0 if self._showing == "a" else 1
            self._draw_image(p, panes[0], index, QRectF(panes[0]))
            self._draw_label(p, panes[0], index)
        else:
            pane, x = QRectF(panes[0]), self._divider_x()
            self._draw_image(p, panes[0], 0, QRectF(pane.left(), pane.top(), x - pane.left(), pane.height()))
            self._draw_image(p, panes[0], 1, QRectF(x, pane.top(), pane.right() - x, pane.height()))
            self._draw_divider(p, pane, x)
            self._draw_label(p, panes[0], 0)
            self._draw_label(p, panes[0], 1, right=True)

    def _draw_image(self, p: QPainter, pane: QRect, index: int, clip: QRectF) -> None:
        pixmap, rect = self._loaded()[index], self._image_rect(pane)
        # screen pixels per pixel of this image, per axis: a B of another size or shape has its own
        sx, sy = rect.width() / pixmap.width(), rect.height() / pixmap.height()
        ratio = self.devicePixelRatioF()
        # whole device pixels, so 1:1 and the pre-scaled copies are not smeared by half-pixel offsets; floor, not
        # round(), whose ties-to-even would place the two side panes a pixel apart
        origin = QPointF(math.floor(rect.x() * ratio + 0.5) / ratio, math.floor(rect.y() * ratio + 0.5) / ratio)
        p.save()
        p.setClipRect(clip)
        if math.isclose(sx, 1.0) and math.isclose(sy, 1.0):
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
            p.drawPixmap(origin, pixmap)
        elif max(sx, sy) < 1:
            p.drawPixmap(origin, self._downscaled(index, rect.size(), ratio))
        else:
            # bilinear between 1x and 2x; from 2x up each image pixel is a crisp block
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, min(sx, sy) < 2)
            p.drawPixmap(QRectF(origin, rect.size()), pixmap, QRectF(pixmap.rect()))
        p.restore()

    def _downscaled(self, index: int, size: QSizeF, ratio: float) -> QPixmap:
        # QPixmap.scaled averages areas; the painter's bilinear filter would alias fine detail when zoomed out
        device = QSize(max(1, round(size.width() * ratio)), max(1, round(size.height() * ratio)))
        cached = self._scaled.get(index)
        if cached is None or cached[0] != device:
            scaled = self._loaded()[index].scaled(
                device, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
            scaled.setDevicePixelRatio(ratio)
            cached = self._scaled[index] = (device, scaled)
        return cached[1]

    def _draw_label(self, p: QPainter, pane: QRect, index: int, right: bool = False) -> None:
        letter, label = "AB"[index], self._labels[index]
        text = f"{letter} · {label}" if self._labels_visible and label else letter
        metrics = p.fontMetrics()
        margin = 8
        room = pane.width() // 2 if self._mode == "wipe" else pane.width()  # wipe puts both labels in one pane
        text = metrics.elidedText(text, Qt.TextElideMode.ElideRight, max(room - 2 * margin - 12, 20))
        box = QRectF(0, 0, metrics.horizontalAdvance(text) + 12, metrics.height() + 6)
        if right:
            box.moveTopRight(QPointF(pane.x() + pane.width() - margin, pane.y() + margin))
        else:
            box.moveTopLeft(QPointF(pane.x() + margin, pane.y() + margin))
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(0, 0, 0, 170))
        p.drawRoundedRect(box, 4, 4)
        p.setPen(QColor("#f0f0f0"))
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
        p.restore()

    def _draw_divider(self, p: QPainter, pane: QRectF, x: float) -> None:
        x = round(x) + 0.5  # a 1 px line on a pixel centre
        mid = pane.center().y()
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QPen(QColor(0, 0, 0, 120), 3))  # a dark rim keeps the line visible on light images
        p.drawLine(QPointF(x, pane.top()), QPointF(x, pane.bottom()))
        p.setPen(QPen(QColor("#f0f0f0"), 1))
        p.drawLine(QPointF(x, pane.top()), QPointF(x, pane.bottom()))
        p.setBrush(QColor(43, 45, 49, 220))
        p.drawEllipse(QPointF(x, mid), 11, 11)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor("#f0f0f0"))
        for side in (-1, 1):
            p.drawPolygon(
                QPolygonF([QPointF(x + side * 7, mid), QPointF(x + side * 3, mid - 4), QPointF(x + side * 3, mid + 4)])
            )
        p.restore()

    # -- input ------------------------------------------------------------------------------------------------------

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if event.modifiers() & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier):
            super().keyPressEvent(event)  # leave shortcuts to the window
        elif key in self.KEYS:
            self.set_mode(self.KEYS[Qt.Key(key)])
        elif key == Qt.Key.Key_Space and self._mode == "flip":
            self.flip()
        elif key == Qt.Key.Key_1:
            self.actual_size()
        elif key == Qt.Key.Key_0:
            self.fit()
        else:
            super().keyPressEvent(event)

    def _near_divider(self, pos: QPointF) -> bool:
        return self._mode == "wipe" and abs(pos.x() - self._divider_x()) <= GRAB

    def _in_area(self, pos: QPointF) -> bool:
        return self._pixmaps is not None and QRectF(self.area.geometry()).contains(pos)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos, button = event.position(), event.button()
        if not self._in_area(pos):
            super().mousePressEvent(event)
            return
        shift = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if button == Qt.MouseButton.LeftButton and self._mode == "wipe" and (shift or self._near_divider(pos)):
            self._drag = "wipe"
            self._wipe_to(pos.x())
        elif button in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
            self._drag, self._last = "pan", pos
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        else:
            super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if self._drag == "wipe":
            self._wipe_to(pos.x())
        elif self._drag == "pan":
            self._hold()
            delta, self._last = pos - self._last, pos
            self._pan = self._clamped_pan(self._pan - delta / self._zoom)
            self._changed()
        else:
            self._update_cursor(pos)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._drag = None
        self._update_cursor(event.position())

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120  # fractional on touchpads
        if not self._in_area(event.position()) or not steps:
            super().wheelEvent(event)
            return
        self._zoom_at(event.position(), self.zoom * WHEEL_STEP**steps)
        event.accept()

    def _wipe_to(self, x: float) -> None:
        pane = self.panes()[0]
        self.set_wipe((x - pane.x()) / max(pane.width(), 1))

    def _update_cursor(self, pos: QPointF) -> None:
        if not self._in_area(pos):
            self.unsetCursor()
        elif self._near_divider(pos):
            self.setCursor(Qt.CursorShape.SplitHCursor)
        else:
            self.setCursor(Qt.CursorShape.OpenHandCursor)


class ABDialog(QDialog):
    """Two images in the A/B viewer, in a window of their own; ``show_pair`` shows another pair in it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("A/B")
        self.viewer = ABViewer()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.viewer)
        self.resize(1100, 640)

    def show_pair(
        self, a: QImage | str | Path, b: QImage | str | Path, a_label: str = "", b_label: str = "", title: str = ""
    ) -> None:
        self.viewer.set_images(a, b, a_label, b_label)
        self.viewer.set_mode("side")
        self.setWindowTitle(title or "A/B")
        self.show()
        self.raise_()
        self.activateWindow()
        self.viewer.setFocus()
