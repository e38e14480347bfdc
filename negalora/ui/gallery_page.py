"""The gallery: a virtualised thumbnail grid made for the keyboard.

X reject, P pick, U clear, 1-9 reject with a reason tag, arrows move, Enter opens the large view,
R re-renders the selection (img2img, e.g. through the LoRA), Ctrl+Z undoes (a window-wide action).
A verdict advances to the next image. Drop files or folders to import them; dropped on the Rejected
filter (or while it is active) they come in as rejects.
"""

from pathlib import Path

from PySide6.QtCore import QModelIndex, QObject, QRect, QRunnable, QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QAction, QColor, QFont, QKeyEvent, QPainter, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMenu,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QVBoxLayout,
    QWidget,
)

from negalora.store import Store
from negalora.ui.gallery_model import FILTERS, GalleryModel, ImageRole

CELL = 168
REASONS = ("hands", "text", "blur", "anatomy", "artifacts", "composition", "face", "color", "cropped")
FILTER_LABELS = {"all": "All", "reject": "Rejected", "pick": "Picked", "unrated": "Unrated"}
REJECT_COLOR = QColor("#e5484d")
PICK_COLOR = QColor("#46a758")


class ThumbDelegate(QStyledItemDelegate):
    def sizeHint(self, option, index) -> QSize:
        return QSize(CELL, CELL)

    def paint(self, painter: QPainter, option, index: QModelIndex) -> None:
        row = index.data(ImageRole)
        rect = option.rect.adjusted(4, 4, -4, -4)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.fillRect(rect, QColor("#2b2d31") if not selected else QColor("#3b4a63"))
        pix = index.data(Qt.ItemDataRole.DecorationRole)
        inner = rect.adjusted(6, 6, -6, -6)
        if pix is not None and not pix.isNull():
            scaled = pix.size().scaled(inner.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(0, 0, scaled.width(), scaled.height())
            target.moveCenter(inner.center())
            painter.drawPixmap(target, pix)
            if row.verdict == "reject":  # dim rejects, as culling tools do
                painter.fillRect(target, QColor(0, 0, 0, 110))
        else:
            painter.setPen(QColor("#6b6f76"))
            painter.drawText(inner, Qt.AlignmentFlag.AlignCenter, "…")
        if row.verdict:
            color = REJECT_COLOR if row.verdict == "reject" else PICK_COLOR
            painter.setPen(QPen(color, 3))
            painter.drawRect(rect.adjusted(1, 1, -2, -2))
            badge = QRect(rect.right() - 30, rect.top() + 6, 24, 24)
            painter.setBrush(color)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.drawEllipse(badge)
            painter.setPen(QColor("white"))
            f = QFont(painter.font())
            f.setBold(True)
            painter.setFont(f)
            painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, "✕" if row.verdict == "reject" else "★")
        if selected:
            painter.setPen(QPen(QColor("#7aa2f7"), 2))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(rect)
        if row.reasons:
            strip = QRect(rect.left() + 6, rect.bottom() - 24, rect.width() - 12, 20)
            painter.fillRect(strip, QColor(0, 0, 0, 170))
            painter.setPen(QColor("#f1f1f1"))
            f = QFont(painter.font())
            f.setPointSizeF(max(7.0, f.pointSizeF() - 1.5))
            f.setBold(False)
            painter.setFont(f)
            painter.drawText(strip, Qt.AlignmentFlag.AlignCenter, ", ".join(row.reasons))
        painter.restore()


class GalleryView(QListView):
    rate = Signal(str, object)  # verdict ('reject' | 'pick' | 'clear'), reason or None
    open_current = Signal()
    rerender = Signal()  # R: re-render the selection

    KEYS = {Qt.Key.Key_X: "reject", Qt.Key.Key_P: "pick", Qt.Key.Key_U: "clear"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setGridSize(QSize(CELL, CELL))
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setItemDelegate(ThumbDelegate(self))
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(400)
        self.setSpacing(0)
        self.setStyleSheet("QListView { background: #1e1f22; border: none; }")
        self.setAcceptDrops(False)  # the page handles drops

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        mods = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        if mods == Qt.KeyboardModifier.NoModifier:
            if key in self.KEYS:
                self.rate.emit(self.KEYS[Qt.Key(key)], None)
                return
            if Qt.Key.Key_1 <= key <= Qt.Key.Key_9:
                self.rate.emit("reject", REASONS[key - Qt.Key.Key_1])
                return
            if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                self.open_current.emit()
                return
            if key == Qt.Key.Key_R:
                self.rerender.emit()
                return
        super().keyPressEvent(event)


class _ImportSignals(QObject):
    done = Signal(list, list)  # stored ids, refused (path, reason)


class _ImportJob(QRunnable):
    """Imports on a pool thread with its own database connection, so big drops never freeze."""

    def __init__(self, home, paths, reject, signals):
        super().__init__()
        self.home, self.paths, self.reject, self.signals = home, paths, reject, signals

    def run(self) -> None:
        from negalora.importing import import_files

        store = Store(self.home)
        try:
            done, refused = import_files(store, self.paths, reject=self.reject)
        finally:
            store.close()
        self.signals.done.emit([d.id for d in done], [(str(r.path), r.reason) for r in refused])


class FilterButton(QPushButton):
    dropped = Signal(list)

    def __init__(self, text: str, accepts_drops: bool):
        super().__init__(text)
        self.setCheckable(True)
        self.setAcceptDrops(accepts_drops)

    def dragEnterEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):
        self.dropped.emit([Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()])
        event.acceptProposedAction()


class GalleryPage(QWidget):
    status = Signal(str)  # a message for the status bar
    open_image = Signal(int)
    rerender = Signal(list)  # image ids: open the Re-render dialog on them
    compare_pair = Signal(int, int)  # two image ids: show them in the A/B viewer
    compare_rerenders = Signal(list)  # image ids: the Compare page, with them as its init images

    def __init__(self, store: Store, model: GalleryModel, parent=None):
        super().__init__(parent)
        self.store = store
        self.model = model
        self.undo_stack: list[str] = []  # rating batches made in this window, newest last
        self.setAcceptDrops(True)
        self._import_signals = _ImportSignals()
        self._import_signals.done.connect(self._imported)

        self.buttons: dict[str, FilterButton] = {}
        group = QButtonGroup(self)
        group.setExclusive(True)
        bar = QHBoxLayout()
        for name in FILTERS:
            b = FilterButton(FILTER_LABELS[name], accepts_drops=(name == "reject"))
            b.clicked.connect(lambda _=False, n=name: self.set_filter(n))
            group.addButton(b)
            bar.addWidget(b)
            self.buttons[name] = b
        self.buttons["reject"].dropped.connect(lambda paths: self.import_paths(paths, reject=True))
        self.buttons["all"].setChecked(True)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Filter by prompt text…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(lambda t: self.model.set_filter(self.model.filter, t.strip()))
        bar.addWidget(self.search, 1)
        self.rerender_button = QPushButton("Re-render…")
        self.rerender_button.setToolTip(
            "Render the selected images again (img2img): their composition kept, e.g. through the LoRA (R)"
        )
        self.rerender_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the culling keys stay with the grid
        self.rerender_button.clicked.connect(self.rerender_selection)
        bar.addWidget(self.rerender_button)
        self.ready_label = QLabel()
        self.ready_label.setObjectName("readyLabel")
        self.ready_label.setStyleSheet("#readyLabel { color: #e5484d; font-weight: bold; padding-left: 12px; }")
        bar.addWidget(self.ready_label)

        self.view = GalleryView()
        self.view.setModel(model)
        self.view.rate.connect(self.rate_selection)
        self.view.open_current.connect(self._open_current)
        self.view.rerender.connect(self.rerender_selection)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.doubleClicked.connect(lambda idx: self.open_image.emit(idx.data(ImageRole).id))
        self.hint = QLabel(
            "X reject · P pick · U clear · 1–9 reject with a reason "
            f"({', '.join(f'{i + 1} {r}' for i, r in enumerate(REASONS))}) · Enter large view · R re-render · "
            "Ctrl+Z undo · right-click for more · drop images here to import"
        )
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #8b8f96; font-size: 11px;")

        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.hint)
        model.counts_changed.connect(self._update_counts)
        model.modelReset.connect(self._select_first)
        model.reload()

    # -- filters and counts ---------------------------------------------------------------

    def set_filter(self, name: str) -> None:
        self.buttons[name].setChecked(True)
        self.model.set_filter(name)

    def _update_counts(self, counts: dict) -> None:
        for name, b in self.buttons.items():
            b.setText(f"{FILTER_LABELS[name]} ({counts[name]})")
        n = counts["reject"]
        self.ready_label.setText(f"{n} reject{'s' if n != 1 else ''} ready for training")

    def _select_first(self) -> None:
        if self.model.rowCount() and not self.view.currentIndex().isValid():
            self.view.setCurrentIndex(self.model.index(0))

    # -- rating ---------------------------------------------------------------------------

    def selected_ids(self) -> list[int]:
        rows = sorted({i.row() for i in self.view.selectionModel().selectedIndexes()})
        if not rows and self.view.currentIndex().isValid():
            rows = [self.view.currentIndex().row()]
        return [self.model.row_at(r).id for r in rows]

    def rate_selection(self, verdict: str, reason: str | None = None) -> None:
        ids = self.selected_ids()
        if ids:
            self.rate_ids(ids, verdict, reason)
            if len(ids) == 1:
                self.advance()

    def rate_ids(self, ids: list[int], verdict: str, reason: str | None = None) -> None:
        """Write a verdict for these images (a reason tag joins each image's own tags); Ctrl+Z reverts it."""
        batch = self.store.rate(ids, None if verdict == "clear" else verdict, add_reason=reason)
        self.undo_stack.append(batch)
        self.model.refresh_rows(ids)
        label = {"reject": "Rejected", "pick": "Picked", "clear": "Cleared"}[verdict]
        n = len(ids)
        self.status.emit(f"{label} {n} image{'s' if n != 1 else ''}" + (f" ({reason})" if reason else ""))

    def advance(self) -> None:
        cur = self.view.currentIndex()
        nxt = cur.row() + 1
        if nxt >= self.model.rowCount() and self.model.canFetchMore():
            self.model.fetchMore()
        if nxt < self.model.rowCount():
            self.view.setCurrentIndex(self.model.index(nxt))

    def undo(self) -> None:
        """Revert this window's newest rating (all images it touched); other processes' ratings stay."""
        if not self.undo_stack:
            self.status.emit("Nothing to undo")
            return
        undone = self.store.undo_batch(self.undo_stack.pop())
        ids = [u["image_id"] for u in undone]
        self.model.refresh_rows(ids)
        idx = self.model.index_of(ids[0]) if ids else None
        if idx is not None and idx.isValid():
            self.view.setCurrentIndex(idx)
        if len(ids) == 1:
            self.status.emit(f"Undid the rating of #{ids[0]} ({undone[0]['verdict'] or 'unrated'} again)")
        else:
            self.status.emit(f"Undid the rating of {len(ids)} images")

    # -- re-render and A/B ------------------------------------------------------------------

    def rerender_selection(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.rerender.emit(ids)

    def compare_selection(self) -> None:
        """Two selected images side by side in the A/B viewer: the older one is A."""
        ids = self.selected_ids()
        if len(ids) == 2:
            a, b = sorted(ids)
            self.compare_pair.emit(a, b)

    def context_menu(self) -> QMenu:
        """The actions on the selection, as the right-click menu offers them."""
        ids = self.selected_ids()
        n = len(ids)
        menu = QMenu(self)
        rerender = QAction(f"Re-render {n} image{'s' if n != 1 else ''}…\tR", menu)
        rerender.setEnabled(n > 0)
        rerender.triggered.connect(self.rerender_selection)
        compare = QAction("Compare the two in the A/B viewer", menu)
        compare.setEnabled(n == 2)
        compare.triggered.connect(self.compare_selection)
        rerenders = QAction("Compare re-renders of these… (base / wrong / LoRA)", menu)
        rerenders.setEnabled(n > 0)
        rerenders.triggered.connect(lambda: self.compare_rerenders.emit(ids))
        menu.addAction(rerender)
        menu.addAction(compare)
        menu.addAction(rerenders)
        menu.addSeparator()
        for label, key, verdict in (("Reject", "X", "reject"), ("Pick", "P", "pick"), ("Clear rating", "U", "clear")):
            action = QAction(f"{label}\t{key}", menu)
            action.setEnabled(n > 0)
            action.triggered.connect(lambda _=False, v=verdict: self.rate_selection(v))
            menu.addAction(action)
        return menu

    def _context_menu(self, pos) -> None:
        index = self.view.indexAt(pos)
        if index.isValid() and not self.view.selectionModel().isSelected(index):
            self.view.setCurrentIndex(index)  # a right-click outside the selection acts on that image
        menu = self.context_menu()
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        menu.popup(self.view.viewport().mapToGlobal(pos))

    def _open_current(self) -> None:
        idx = self.view.currentIndex()
        if idx.isValid():
            self.open_image.emit(idx.data(ImageRole).id)

    # -- import by drag and drop ----------------------------------------------------------

    def dragEnterEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        self.import_paths(paths, reject=self.model.filter == "reject")
        event.acceptProposedAction()

    def import_paths(self, paths: list[Path], reject: bool) -> None:
        if not paths:
            return
        self.status.emit(f"Importing {len(paths)} item{'s' if len(paths) != 1 else ''}…")
        QThreadPool.globalInstance().start(_ImportJob(self.store.home, paths, reject, self._import_signals))

    def _imported(self, ids: list, refused: list) -> None:
        current = self.view.currentIndex()
        keep = current.data(ImageRole).id if current.isValid() else None
        self.model.reload()
        if keep is not None and self.model.index_of(keep).isValid():
            self.view.setCurrentIndex(self.model.index_of(keep))  # culling goes on where it was
        msg = f"Imported {len(ids)} image{'s' if len(ids) != 1 else ''}"
        if refused:
            msg += f"; refused {len(refused)}: " + "; ".join(f"{Path(p).name} ({r})" for p, r in refused[:3])
        self.status.emit(msg)
