"""Thumbnails: decoded off the UI thread, cached on disk (JPEG) and in memory (LRU of pixmaps)."""

from collections import OrderedDict
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QImage, QImageReader, QPixmap

THUMB_SIDE = 256
QT_FORMATS = {"png", "jpeg", "jpg", "webp", "bmp", "tiff", "tif"}  # negalora.image_files.ALLOWED_FORMATS
ALLOCATION_LIMIT_MB = 256  # a decompression bomb stops here; said explicitly, not left to Qt's default


class _Signals(QObject):
    ready = Signal(str, QImage)  # sha256, image


class _LoadThumb(QRunnable):
    def __init__(self, sha: str, source: Path, cached: Path, signals: _Signals):
        super().__init__()
        self.sha, self.source, self.cached, self.signals = sha, source, cached, signals

    def run(self) -> None:
        image = QImage()
        try:
            image = self._load()
        finally:  # always answer, or the thumbnail would wait forever
            self.signals.ready.emit(self.sha, image)

    def _load(self) -> QImage:
        image = QImage(str(self.cached)) if self.cached.exists() else QImage()
        if image.isNull():
            reader = QImageReader(str(self.source))
            if bytes(reader.format().data()).decode().lower() not in QT_FORMATS:
                return QImage()  # a file swapped on disk for another kind: the same allow-list as import
            reader.setAllocationLimit(ALLOCATION_LIMIT_MB)
            reader.setAutoTransform(True)  # EXIF orientation
            size = reader.size()
            if size.isValid() and max(size.width(), size.height()) > THUMB_SIDE:
                reader.setScaledSize(size.scaled(QSize(THUMB_SIDE, THUMB_SIDE), Qt.AspectRatioMode.KeepAspectRatio))
            image = reader.read()
            if not image.isNull():
                self.cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cached.with_name(f".{self.cached.stem}.{id(self)}.jpg")
                rgb = image.convertToFormat(QImage.Format.Format_RGB888)
                # PySide6's stub types QImage.save's format as bytes, but at run time it takes only a str (b"JPG"
                # raises ValueError): the stub is wrong here
                if rgb.save(str(tmp), "JPG", 90):  # pyright: ignore[reportCallIssue, reportArgumentType]
                    tmp.replace(self.cached)
        return image


class ThumbnailCache(QObject):
    """``get(sha, path)`` returns a pixmap now or None and emits ``loaded(sha)`` once it has one."""

    loaded = Signal(str)

    def __init__(self, cache_dir: Path, capacity: int = 2000, parent=None):
        super().__init__(parent)
        self.cache_dir = Path(cache_dir)
        self.capacity = capacity
        self._pixmaps: OrderedDict[str, QPixmap] = OrderedDict()
        self._pending: set[str] = set()
        self._failed: set[str] = set()
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(2)
        self._signals = _Signals()
        self._signals.ready.connect(self._on_ready)

    def disk_path(self, sha: str) -> Path:
        return self.cache_dir / sha[:2] / f"{sha}.jpg"

    def get(self, sha: str, path: str | Path) -> QPixmap | None:
        pix = self._pixmaps.get(sha)
        if pix is not None:
            self._pixmaps.move_to_end(sha)
            return pix
        if sha not in self._pending and sha not in self._failed:
            self._pending.add(sha)
            self._pool.start(_LoadThumb(sha, Path(path), self.disk_path(sha), self._signals))
        return None

    def failed(self, sha: str) -> bool:
        return sha in self._failed

    def _on_ready(self, sha: str, image: QImage) -> None:
        self._pending.discard(sha)
        if image.isNull():
            self._failed.add(sha)
        else:
            self._pixmaps[sha] = QPixmap.fromImage(image)
            while len(self._pixmaps) > self.capacity:
                self._pixmaps.popitem(last=False)
        self.loaded.emit(sha)

    def wait_idle(self, msecs: int = 5000) -> bool:
        return self._pool.waitForDone(msecs)
