"""The gallery's list model: images of one filter, newest first, fetched from the store in chunks."""

from dataclasses import dataclass, field

from PySide6.QtCore import QAbstractListModel, QModelIndex, Qt, Signal

from negalora.store import Store
from negalora.ui.thumbnails import ThumbnailCache

CHUNK = 1000
FILTERS = ("all", "reject", "pick", "unrated")

ImageRole = Qt.ItemDataRole.UserRole + 1


@dataclass
class Row:
    id: int
    sha256: str
    path: str
    verdict: str | None
    reasons: list[str] = field(default_factory=list)
    prompt: str = ""
    seed: int | None = None


class GalleryModel(QAbstractListModel):
    counts_changed = Signal(dict)

    def __init__(self, store: Store, thumbs: ThumbnailCache, parent=None):
        super().__init__(parent)
        self.store = store
        self.thumbs = thumbs
        self.filter = "all"
        self.search = ""
        self._rows: list[Row] = []
        self._row_of: dict[int, int] = {}
        self._row_of_sha: dict[str, int] = {}
        self._exhausted = False
        thumbs.loaded.connect(self._thumb_loaded)

    # -- loading --------------------------------------------------------------------------

    def _query(self, before_id: int | None, limit: int) -> list[Row]:
        verdict = None if self.filter == "all" else self.filter
        rows = self.store.gallery_rows(verdict, self.search or None, before_id, limit)
        return [Row(r["id"], r["sha256"], r["path"], r["verdict"], r["reasons"], r["prompt"], r["seed"]) for r in rows]

    def set_filter(self, name: str, search: str | None = None) -> None:
        self.filter = name
        if search is not None:
            self.search = search
        self.reload()

    def reload(self) -> None:
        self.beginResetModel()
        self._rows = self._query(None, CHUNK)
        self._exhausted = len(self._rows) < CHUNK
        self._reindex()
        self.endResetModel()
        self.emit_counts()

    def _reindex(self) -> None:
        self._row_of = {r.id: i for i, r in enumerate(self._rows)}
        self._row_of_sha = {r.sha256: i for i, r in enumerate(self._rows)}

    def canFetchMore(self, parent=QModelIndex()) -> bool:  # noqa: B008 - Qt's signature
        return not parent.isValid() and not self._exhausted

    def fetchMore(self, parent=QModelIndex()) -> None:  # noqa: B008
        if parent.isValid() or self._exhausted or not self._rows:
            return
        more = self._query(self._rows[-1].id, CHUNK)
        self._exhausted = len(more) < CHUNK
        if more:
            start = len(self._rows)
            self.beginInsertRows(QModelIndex(), start, start + len(more) - 1)
            self._rows.extend(more)
            self._reindex()
            self.endInsertRows()

    def emit_counts(self) -> None:
        self.counts_changed.emit(self.store.counts())

    # -- Qt model -------------------------------------------------------------------------

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        if role == ImageRole:
            return row
        if role == Qt.ItemDataRole.DecorationRole:
            return self.thumbs.get(row.sha256, row.path)
        if role == Qt.ItemDataRole.ToolTipRole:
            seed = f"\nseed {row.seed}" if row.seed is not None else ""
            return f"#{row.id}  {row.verdict or 'unrated'}\n{row.prompt}{seed}"
        if role == Qt.ItemDataRole.DisplayRole:
            return f"#{row.id}"
        return None

    def row_at(self, i: int) -> Row:
        return self._rows[i]

    def index_of(self, image_id: int) -> QModelIndex:
        i = self._row_of.get(image_id)
        return self.index(i) if i is not None else QModelIndex()

    # -- changes --------------------------------------------------------------------------

    def refresh_rows(self, image_ids) -> None:
        """Re-read verdicts of these images from the store (after a rating or an undo)."""
        ids = [i for i in image_ids if i in self._row_of]
        if ids:
            found = self.store.verdicts(ids)
            for image_id in ids:
                row = self._rows[self._row_of[image_id]]
                row.verdict, row.reasons = found.get(image_id, (None, []))
                idx = self.index(self._row_of[image_id])
                self.dataChanged.emit(idx, idx)
        self.emit_counts()

    def add_new(self, image_id: int) -> None:
        """A new image arrived: show it at the top if it passes the filter."""
        if image_id in self._row_of or (self._rows and image_id < self._rows[0].id):
            self.emit_counts()  # an old image (a duplicate) is already in its place in the order
            return
        rows = self._query(image_id + 1, 1)  # the newest image at or below this id that passes the filter
        if rows and rows[0].id == image_id:
            self.beginInsertRows(QModelIndex(), 0, 0)
            self._rows.insert(0, rows[0])
            self._reindex()
            self.endInsertRows()
        self.emit_counts()

    def _thumb_loaded(self, sha: str) -> None:
        i = self._row_of_sha.get(sha)
        if i is not None:
            idx = self.index(i)
            self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])
