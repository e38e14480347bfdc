"""The Export page: pick a run, a checkpoint (the best one is marked), a format and a name; see the
header metadata that will be written; Export runs in the worker, which writes the file, reloads it
on the run's base model and checks it before putting it in place. The result shows the path, the
hashes and what the check found."""

from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFont, QGuiApplication, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from negalora.api import ExportRequest
from negalora.store import Store

FORMAT_LABELS = {"kohya": "kohya — A1111, Forge, ComfyUI", "diffusers": "diffusers — load_lora_weights()"}
THUMB = 150


WAY_NAMES = {
    "negative_pass": "the LoRA on the negative pass",
    "positive_pass": "the LoRA on the positive pass, the prompt unchanged",
    "positive_with_wrong": "the LoRA on the positive pass beside a `wrong` LoRA on the negative",
    "wrong_negative_pass": "a `wrong` LoRA alone on the negative pass, not this LoRA",
    "both_passes": "the LoRA on both passes",
    "token_only": "`wrong` alone, no LoRA",
    "base": "no LoRA at all",
}


class _PreviewSignals(QObject):
    done = Signal(int, dict)  # request number, {metadata, dest, card, model, error}


class _Preview(QRunnable):
    """Plans the export on a pool thread with its own connection: the metadata exactly as it will be
    written (hashes included), without writing anything."""

    def __init__(self, home, number: int, request: ExportRequest, signals: _PreviewSignals):
        super().__init__()
        self.home, self.number, self.request, self.signals = home, number, request, signals

    def run(self) -> None:
        from negalora.errors import NegaloraError
        from negalora.export import plan_export

        store = Store(self.home)
        try:
            plan = plan_export(store, self.request)
            out = {
                "metadata": plan.metadata,
                "dest": str(plan.dest),
                "card": str(plan.card),
                "name": plan.name,
                "grid": str(plan.grid_source or ""),
                "summary": f"step {plan.source.step}: {plan.modules} LoRA modules, rank {plan.source.config.rank}, "
                f"alpha {plan.alpha:g}, {plan.source.images} training images",
                "workflow": str(plan.workflow),
                "api_workflow": str(plan.api_workflow),
                "best_way": plan.evidence.best,
                "measured_on": plan.evidence.source,
                "strength": plan.evidence.strength.how,
                "has_sweep": bool(plan.evidence.strength.sweep),
                "step": plan.source.step,
                "model_source": (store.run_model(plan.source.run_id) or {}).get("source", ""),
            }
        except NegaloraError as exc:
            out = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - shown on the page, never a crash of the window
            out = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            store.close()
        self.signals.done.emit(self.number, out)


def metadata_text(metadata: dict) -> str:
    """The header as the reader should see it: long values (the thumbnail, JSON) kept short."""
    shown = {}
    for key, value in metadata.items():
        if key == "modelspec.thumbnail":
            value = f"{value[:40]}… ({len(value) // 1024} kB JPEG)"
        elif key == "lora_adapter_metadata":
            value = f"(peft LoRA config, {len(value)} characters)"
        shown[key] = value
    return "\n".join(f"{k}: {v}" for k, v in shown.items())


def evidence_text(out: dict) -> str:
    """What the card will lead with, and on what it rests."""
    way = WAY_NAMES.get(out.get("best_way", ""), "")
    if not way:
        return ""
    if out.get("measured_on") == "run":
        text = f"Measured on this run, {way} did best; the card and the ComfyUI workflow use it that way."
    else:
        text = (
            f"This run has no rated comparison or blind vote yet: the card gives the demo world's numbers "
            f"({way} did best there), labelled as such."
        )
    if out.get("strength") == "none":
        text += " No rated strength sweep on both passes: the card cannot yet say which strength to use in A1111."
    return text


def result_text(export: dict) -> str:
    v = export["verification"]
    hashes = export["hashes"]
    lines = [
        "Files written:",
        *(f"  {f}" for f in export.get("files") or (export["path"], export["model_card"])),
        "",
        f"sha256 (whole file): {export['sha256']}",
        f"sshs_model_hash (tensor data; A1111's LoRA hash): {hashes['sshs_model_hash']['value']}",
        f"sshs_legacy_hash (kohya's legacy hash): {hashes['sshs_legacy_hash']['value']}",
        "",
    ]
    if v.get("verified"):
        lines += [
            f"Verified by reloading it with diffusers: {v['modules_loaded']} of {v['modules_in_file']} LoRA modules "
            f"loaded, weights and scale equal to the checkpoint's (largest difference {v['max_weight_diff']:.1g}).",
            f"Test image (seed {v['seed']}, {v['size']}×{v['size']}, {v['steps']} steps, negative "
            f"'{v['negative']}'): at most {v['max_pixel_diff']}/255 from the app's render (allowed {v['tolerance']}).",
        ]
    else:
        lines.append("Not verified.")
    return "\n".join(lines)


class ExportPage(QWidget):
    render_sweep = Signal(dict)  # a CompareRequest dict: the main window renders it on the Compare page

    def __init__(self, store: Store, jobs, parent=None):
        super().__init__(parent)
        self.store = store
        self.jobs = jobs
        self._job: str | None = None
        self._preview_number = 0
        self._preview: dict = {}
        self._last: dict | None = None  # the last finished export

        title = QLabel("<h2>Export</h2>")
        intro = QLabel(
            "Writes a checkpoint as a LoRA for A1111, ComfyUI or diffusers, with its metadata and a model card. "
            "Before the file is put in place it is reloaded on the run's base model and must render like the "
            "checkpoint does here. Use it with <b>wrong</b> in the negative prompt."
        )
        intro.setWordWrap(True)

        self.runs = QComboBox()
        self.runs.setMinimumWidth(420)
        self.runs.currentIndexChanged.connect(lambda _: self._fill_steps())
        self.steps = QComboBox()
        self.steps.currentIndexChanged.connect(lambda _: self._start_preview())
        self.format = QComboBox()
        for key, label in FORMAT_LABELS.items():
            self.format.addItem(label, key)
        self.format.currentIndexChanged.connect(lambda _: self._start_preview())
        self.name = QLineEdit()
        self.name.textChanged.connect(lambda _: self._timer.start())
        self.dest = QLabel("–")
        self.dest.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.dest.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Run", self.runs)
        form.addRow("Checkpoint", self.steps)
        form.addRow("Format", self.format)
        form.addRow("Name", self.name)
        form.addRow("Writes", self.dest)
        self.thumb = QLabel()
        self.thumb.setFixedSize(THUMB, THUMB)
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumb.setStyleSheet("border: 1px solid #3a3d44; color: #7d8088;")
        settings = QGroupBox("What to export")
        top = QHBoxLayout(settings)
        top.addLayout(form, 1)
        top.addWidget(self.thumb)

        self.export_button = QPushButton("Export")
        self.export_button.setStyleSheet("QPushButton { font-weight: bold; padding: 8px 18px; }")
        self.export_button.clicked.connect(self._export)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: self.jobs.cancel(self._job) if self._job else None)
        self.open_button = QPushButton("Show folder")
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(self._open_folder)
        self.copy_button = QPushButton("Copy ComfyUI workflow")
        self.copy_button.setToolTip("The UI-format workflow on the clipboard: paste it onto the ComfyUI canvas")
        self.copy_button.setEnabled(False)
        self.copy_button.clicked.connect(self._copy_workflow)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setRange(0, 1)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.evidence = QLabel("")
        self.evidence.setWordWrap(True)
        self.sweep_button = QPushButton("Render a strength sweep")
        self.sweep_button.setToolTip(
            "Render the model's default test set with the LoRA on both passes at strengths 0 to 1 (A1111's way) on "
            "the Compare page; rate the cells, then export again and the card names the best strength"
        )
        self.sweep_button.setVisible(False)
        self.sweep_button.clicked.connect(self._render_sweep)
        evidence_row = QHBoxLayout()
        evidence_row.addWidget(self.evidence, 1)
        evidence_row.addWidget(self.sweep_button)
        buttons = QHBoxLayout()
        for w in (self.export_button, self.cancel_button, self.open_button, self.copy_button):
            buttons.addWidget(w)
        buttons.addWidget(self.progress, 1)

        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        self.metadata = QPlainTextEdit()
        self.metadata.setReadOnly(True)
        self.metadata.setFont(mono)
        self.metadata.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.result = QPlainTextEdit()
        self.result.setReadOnly(True)
        self.result.setFont(mono)
        self.result.setPlaceholderText("The exported file, its hashes and what the check found appear here.")
        self.history = QListWidget()
        self.history.setMaximumHeight(120)
        left = QVBoxLayout()
        left.addWidget(QLabel("<b>Header metadata</b> (exactly what will be written; every value a string)"))
        left.addWidget(self.metadata, 1)
        right = QVBoxLayout()
        right.addWidget(QLabel("<b>Result</b>"))
        right.addWidget(self.result, 1)
        right.addWidget(QLabel("<b>Earlier exports of this run</b>"))
        right.addWidget(self.history)
        lower = QHBoxLayout()
        lower.addLayout(left, 3)
        lower.addLayout(right, 2)

        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addWidget(settings)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addLayout(evidence_row)
        layout.addLayout(lower, 1)

        self._signals = _PreviewSignals()
        self._signals.done.connect(self._previewed)
        self._timer = QTimer(self, singleShot=True, interval=150)  # typing a name: one preview, not one per key
        self._timer.timeout.connect(self._start_preview)
        jobs.job_event.connect(self._job_event)
        self.refresh()

    # -- choices --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the runs and their checkpoints (a run may have finished since)."""
        current = self.runs.currentData()
        self.runs.blockSignals(True)
        self.runs.clear()
        for r in self.store.runs():
            if self.store.checkpoints(r["id"]):
                self.runs.addItem(f"{r['id']} · {r['status']} · {r['images']} images · step {r['steps_done']}", r["id"])
        index = self.runs.findData(current)
        self.runs.setCurrentIndex(max(index, 0))
        self.runs.blockSignals(False)
        if self.runs.count() == 0:
            self.steps.clear()
            self.export_button.setEnabled(False)
            self.status.setText("No run has a checkpoint yet: train one on the Train page first.")
            self.metadata.clear()
            return
        self._fill_steps()

    def _fill_steps(self) -> None:
        run_id = self.runs.currentData()
        if not run_id:
            return
        best = self.store.run(run_id).get("best_step")
        checkpoints = self.store.checkpoints(run_id)
        self.steps.blockSignals(True)
        self.steps.clear()
        for c in reversed(checkpoints):
            self.steps.addItem(f"step {c['step']}" + ("  ★ best" if c["step"] == best else ""), c["step"])
        default = best if best is not None and self.steps.findData(best) >= 0 else checkpoints[-1]["step"]
        self.steps.setCurrentIndex(self.steps.findData(default))
        self.steps.blockSignals(False)
        self._fill_history(run_id)
        self._start_preview()  # a new choice previews at once; typing a name waits for a pause

    def _fill_history(self, run_id: str) -> None:
        self.history.clear()
        for e in reversed(self.store.exports(run_id)):
            item = QListWidgetItem(
                f"{e['created'][:16].replace('T', ' ')}  {e['format']:9}  step {e['step']:<6} {Path(e['path']).name}"
            )
            item.setToolTip(e["path"])
            self.history.addItem(item)

    def request(self) -> ExportRequest | None:
        run_id = self.runs.currentData()
        if not run_id:
            return None
        return ExportRequest(
            run_id=run_id,
            fmt=self.format.currentData(),
            step=self.steps.currentData(),
            name=self.name.text().strip() or None,
        )

    # -- preview --------------------------------------------------------------------------

    def _start_preview(self) -> None:
        self._timer.stop()
        request = self.request()
        if request is None:
            return
        self._preview_number += 1
        QThreadPool.globalInstance().start(_Preview(self.store.home, self._preview_number, request, self._signals))

    def _previewed(self, number: int, out: dict) -> None:
        if number != self._preview_number:
            return  # the choice changed since
        self._preview = out
        if "error" in out:
            self.metadata.setPlainText("")
            self.dest.setText("–")
            self.status.setText(f"<span style='color:#e5484d'>{out['error']}</span>")
            self.export_button.setEnabled(False)
            return
        self.metadata.setPlainText(metadata_text(out["metadata"]))
        self.dest.setText(f"{out['dest']}\n{out['card']}\n{out['workflow']}\n{out['api_workflow']}")
        self.evidence.setText(evidence_text(out))
        self.sweep_button.setVisible(not out.get("has_sweep"))
        self.name.setPlaceholderText(out["name"])
        self.export_button.setEnabled(self._job is None)
        if self._job is None:
            self.status.setText(f"Ready to export {out['summary']}.")
        self._show_thumb(out.get("grid"))

    def _show_thumb(self, grid: str | None) -> None:
        pix = QPixmap(grid) if grid else QPixmap()
        if pix.isNull():
            self.thumb.setPixmap(QPixmap())
            self.thumb.setText("no comparison\ngrid yet")
            return
        self.thumb.setPixmap(pix.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio))
        self.thumb.setToolTip(
            f"The run's latest comparison grid: the header's thumbnail, copied beside the file\n{grid}"
        )

    # -- the job --------------------------------------------------------------------------

    def _export(self) -> None:
        from negalora.errors import NegaloraError
        from negalora.export.source import find_source

        request = self.request()
        if request is None:
            return
        try:  # the run's own base model: the worker verifies the file on it
            model = find_source(self.store, request.run_id, request.step).base_location
        except NegaloraError as exc:
            self.status.setText(f"<span style='color:#e5484d'>{exc}</span>")
            return
        self._job = self.jobs.submit_export(model, request.to_dict())
        self.export_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy
        self.status.setText("Waiting for the worker…")
        self.result.clear()

    def _job_event(self, msg: dict) -> None:
        if self._job is None or msg.get("job") != self._job:
            return
        kind = msg["type"]
        if kind == "started":
            self.status.setText("Reading the checkpoint…")
        elif kind == "export_stage":
            self.status.setText(msg["message"] + "…")
        elif kind in ("finished", "failed"):
            self._job = None
            self.export_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            self.progress.setRange(0, 1)
            if kind == "failed":
                self.status.setText(f"<span style='color:#e5484d'>Export failed: {msg['error']}</span>")
            elif msg["status"] == "cancelled":
                self.status.setText("Cancelled; nothing was written.")
            else:
                export = msg["export"]
                self.progress.setValue(1)
                self.status.setText(f"Exported {Path(export['path']).name}.")
                self.result.setPlainText(result_text(export))
                self.open_button.setEnabled(True)
                self.copy_button.setEnabled(bool(export.get("comfyui_workflow")))
                self._last = export
                self._fill_history(export["run_id"])

    def _copy_workflow(self) -> None:
        if not self._last or not self._last.get("comfyui_workflow"):
            return
        path = Path(self._last["comfyui_workflow"])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            self.status.setText(f"<span style='color:#e5484d'>{path}: cannot read ({exc.strerror or exc})</span>")
            return
        QGuiApplication.clipboard().setText(text)
        self.status.setText(f"Copied {path.name}: paste it onto the ComfyUI canvas (Ctrl+V).")

    def _render_sweep(self) -> None:
        from negalora.compare.prompt_sets import ensure_default_set
        from negalora.export.evidence import sweep_request

        out = self._preview
        run_id = self.runs.currentData()
        if not run_id or "step" not in out:
            return
        ensure_default_set(self.store, out.get("model_source", ""))
        self.render_sweep.emit(sweep_request(run_id, out["step"], out.get("model_source", "")))
        self.status.setText("Rendering a strength sweep on both passes on the Compare page…")

    def _open_folder(self) -> None:
        if self._last:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(self._last["path"]).parent)))

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._job is None:
            self.refresh()
