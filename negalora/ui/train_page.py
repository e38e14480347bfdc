"""The Train page: presets and settings, the dataset with its refusals, Start / Cancel / Resume,
a live loss curve, step, it/s, ETA and peak memory, and validation images as they appear.
Training runs in the worker process; this page only sends the settings and shows the events."""

from dataclasses import asdict, replace
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from negalora.store import Store
from negalora.train.config import LR_SCHEDULES, PRESETS, TrainConfig, default_preset

PRESET_LABELS = {
    "woolf": "Woolf (rank 4, LR 1e-4)",
    "12gb": "12 GB GPU",
    "cpu-demo": "Demo model (rank 16 + feed-forward, LR 3e-4)",
}
THUMB = 72


class _CheckSignals(QObject):
    done = Signal(int, list, list)  # images, refused (path, reason), warnings


class _CheckDataset(QRunnable):
    """Pre-flight on a pool thread with its own connection: the same checks the trainer makes."""

    def __init__(self, home, config: TrainConfig, signals: _CheckSignals):
        super().__init__()
        self.home, self.config, self.signals = home, config, signals

    def run(self) -> None:
        from negalora.train.dataset import collect_rejects, preflight

        store = Store(self.home)
        try:
            report = preflight(
                collect_rejects(store, reasons=self.config.reasons or None),
                token=self.config.token,
                with_reasons=self.config.captions_with_reasons,
            )
        finally:
            store.close()
        refused = [(str(r.path), r.reason) for r in report.refused]
        self.signals.done.emit(len(report.images), refused, list(report.warnings))


class TrainPage(QWidget):
    start = Signal(dict)  # TrainConfig as a dict
    resume = Signal(str)  # run id
    cancel = Signal()

    def __init__(self, store: Store, parent=None):
        super().__init__(parent)
        self.store = store
        self.preset = QComboBox()
        for key, label in PRESET_LABELS.items():
            self.preset.addItem(label, key)
        self.preset.currentIndexChanged.connect(lambda _: self.apply_preset(self.preset.currentData()))
        self.rank = QSpinBox(minimum=1, maximum=256)
        self.alpha = QDoubleSpinBox(minimum=0.0, maximum=1024.0, decimals=1)
        self.alpha.setSpecialValueText("= rank")
        self.steps = QSpinBox(minimum=1, maximum=100_000)
        self.lr = QLineEdit()
        self.schedule = QComboBox()
        self.schedule.addItems(list(LR_SCHEDULES))
        self.warmup = QSpinBox(minimum=0, maximum=100_000)
        self.batch = QSpinBox(minimum=1, maximum=64)
        self.grad_accum = QSpinBox(minimum=1, maximum=64)
        self.resolution = QSpinBox(minimum=0, maximum=2048, singleStep=64)
        self.resolution.setSpecialValueText("model's native")
        self.flip = QCheckBox("Random flips")
        self.feed_forward = QCheckBox("Feed-forward layers too")
        self.min_snr = QDoubleSpinBox(minimum=0.0, maximum=20.0, decimals=1)
        self.min_snr.setSpecialValueText("off")
        self.checkpoint_every = QSpinBox(minimum=1, maximum=100_000)
        self.keep_last = QSpinBox(minimum=0, maximum=1000)
        self.keep_last.setSpecialValueText("all")
        self.token = QLineEdit("wrong")
        self.with_reasons = QCheckBox('Captions with reasons ("wrong, hands")')
        self.text_encoder = QCheckBox("Text encoders too")
        self.prior = QCheckBox("Prior preservation")
        self.prior.setToolTip("Train beside class images the base model makes first (DreamBooth's prior loss).")
        self.compile = QCheckBox("Compile (long runs)")
        self.compile.setToolTip("torch.compile the training step: faster steps after a compile of a few minutes.")
        self.reasons = QLineEdit()
        self.reasons.setPlaceholderText("all reasons (or e.g. hands, text)")
        self.validation_passes = QComboBox()
        self.validation_passes.addItem("LoRA on the negative pass (default)", "negative")
        self.validation_passes.addItem("LoRA on both passes (as A1111)", "both")
        self.validation_passes.setToolTip(
            "How the validation images apply the LoRA. The negative pass is how negalora, the ComfyUI workflow and "
            "negative_pass() use it; both passes is how A1111 and a plain LoraLoader do (worse on the demo world)."
        )

        grid = QGridLayout()
        cells = [
            ("Preset", self.preset),
            ("Rank", self.rank),
            ("Alpha", self.alpha),
            ("Steps", self.steps),
            ("Learning rate", self.lr),
            ("LR schedule", self.schedule),
            ("Warmup steps", self.warmup),
            ("Batch", self.batch),
            ("Gradient accumulation", self.grad_accum),
            ("Resolution", self.resolution),
            ("Min-SNR γ", self.min_snr),
            ("Checkpoint every", self.checkpoint_every),
            ("Keep last", self.keep_last),
            ("Token", self.token),
            ("Only rejects tagged", self.reasons),
            ("Validation images", self.validation_passes),
        ]
        for i, (label, widget) in enumerate(cells):
            grid.addWidget(QLabel(label), i // 3, (i % 3) * 2)
            grid.addWidget(widget, i // 3, (i % 3) * 2 + 1)
        checks = QHBoxLayout()
        for c in (self.flip, self.feed_forward, self.text_encoder, self.with_reasons, self.prior, self.compile):
            checks.addWidget(c)
        checks.addStretch(1)
        settings = QGroupBox("Settings")
        sl = QVBoxLayout(settings)
        sl.addLayout(grid)
        sl.addLayout(checks)

        self.dataset_label = QLabel()
        self.check_button = QPushButton("Check the images")
        self.check_button.clicked.connect(self.check_dataset)
        self.thumbs = QListWidget()
        self.thumbs.setViewMode(QListWidget.ViewMode.IconMode)
        self.thumbs.setIconSize(QSize(THUMB, THUMB))
        self.thumbs.setFlow(QListWidget.Flow.LeftToRight)
        self.thumbs.setWrapping(False)
        self.thumbs.setFixedHeight(THUMB + 26)
        self.refused = QPlainTextEdit()
        self.refused.setReadOnly(True)
        self.refused.setPlaceholderText("Files refused by the pre-flight check appear here, each with its reason.")
        self.refused.setFixedHeight(64)
        dataset = QGroupBox("Dataset")
        dl = QVBoxLayout(dataset)
        top = QHBoxLayout()
        top.addWidget(self.dataset_label, 1)
        top.addWidget(self.check_button)
        dl.addLayout(top)
        dl.addWidget(self.thumbs)
        dl.addWidget(self.refused)

        self.start_button = QPushButton("Start training")
        self.start_button.setStyleSheet("QPushButton { font-weight: bold; padding: 8px 18px; }")
        self.start_button.clicked.connect(self._start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel.emit)
        self.runs = QComboBox()
        self.runs.currentIndexChanged.connect(lambda _: self.show_run(self.runs.currentData()))
        self.resume_button = QPushButton("Resume")
        self.resume_button.clicked.connect(self._resume)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.status = QLabel("Idle")
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addSpacing(24)
        buttons.addWidget(QLabel("Run"))
        buttons.addWidget(self.runs, 1)
        buttons.addWidget(self.resume_button)

        self.plot = pg.PlotWidget(background="#1e1f22")
        self.plot.setLabel("left", "loss")
        self.plot.setLabel("bottom", "step")
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.curve = self.plot.plot([], [], pen=pg.mkPen("#7aa2f7", width=1))
        self.smooth = self.plot.plot([], [], pen=pg.mkPen("#e0af68", width=2))
        self.samples = QListWidget()
        self.samples.setViewMode(QListWidget.ViewMode.IconMode)
        self.samples.setIconSize(QSize(128, 128))
        self.samples.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.samples.setMovement(QListWidget.Movement.Static)
        self.samples.setMinimumWidth(300)

        live = QHBoxLayout()
        plot_box = QVBoxLayout()
        plot_box.addWidget(QLabel("<b>Loss</b> (blue: per step, orange: running mean)"))
        plot_box.addWidget(self.plot, 1)
        samples_box = QVBoxLayout()
        samples_box.addWidget(QLabel("<b>Validation images</b> (negative: wrong)"))
        samples_box.addWidget(self.samples, 1)
        live.addLayout(plot_box, 3)
        live.addLayout(samples_box, 2)

        layout = QVBoxLayout(self)
        layout.addWidget(settings)
        layout.addWidget(dataset)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(live, 1)

        self._steps: list[int] = []
        self._losses: list[float] = []
        self._check_signals = _CheckSignals()
        self._check_signals.done.connect(self._checked)
        self.apply_preset("woolf")
        self.refresh()

    # -- settings -------------------------------------------------------------------------

    def apply_preset(self, key: str) -> None:
        self.apply_values(PRESETS[key])

    def apply_default_preset(self, model_spec: str) -> None:
        """Show the preset a new artist starts from on this model (the measured recipe on the demo)."""
        self.preset.setCurrentIndex(list(PRESETS).index(default_preset(model_spec)))
        self.apply_preset(self.preset.currentData())  # also when the index did not change

    def apply_values(self, c: TrainConfig) -> None:
        """Show a config in the widgets; fields without a widget (validation prompts…) ride along."""
        self._base = c
        for widget, value in (
            (self.rank, c.rank),
            (self.steps, c.steps),
            (self.warmup, c.warmup_steps),
            (self.batch, c.batch),
            (self.grad_accum, c.grad_accum),
            (self.resolution, c.resolution or 0),
            (self.checkpoint_every, c.checkpoint_every),
            (self.keep_last, c.keep_last),
        ):
            widget.setValue(value)
        self.alpha.setValue(c.alpha or 0.0)
        self.lr.setText(f"{c.lr:g}")
        self.schedule.setCurrentText(c.lr_schedule)
        self.flip.setChecked(c.flip)
        self.feed_forward.setChecked(c.feed_forward)
        self.min_snr.setValue(c.min_snr_gamma or 0.0)
        self.token.setText(c.token)
        self.with_reasons.setChecked(c.captions_with_reasons)
        self.prior.setChecked(c.prior_preservation)
        self.text_encoder.setChecked(c.train_text_encoder)
        self.compile.setChecked(bool(c.compile))
        self.reasons.setText(", ".join(c.reasons))
        self.validation_passes.setCurrentIndex(max(self.validation_passes.findData(c.validation_passes), 0))

    def config(self) -> TrainConfig:
        reasons = tuple(r.strip() for r in self.reasons.text().split(",") if r.strip())
        return replace(
            self._base,
            rank=self.rank.value(),
            alpha=self.alpha.value() or None,
            steps=self.steps.value(),
            lr=float(self.lr.text() or 0),
            lr_schedule=self.schedule.currentText(),
            warmup_steps=self.warmup.value(),
            batch=self.batch.value(),
            grad_accum=self.grad_accum.value(),
            resolution=self.resolution.value() or None,
            flip=self.flip.isChecked(),
            feed_forward=self.feed_forward.isChecked(),
            min_snr_gamma=self.min_snr.value() or None,
            checkpoint_every=self.checkpoint_every.value(),
            keep_last=self.keep_last.value(),
            token=self.token.text().strip() or "wrong",
            captions_with_reasons=self.with_reasons.isChecked(),
            prior_preservation=self.prior.isChecked(),
            train_text_encoder=self.text_encoder.isChecked(),
            compile=(self._base.compile or "inductor") if self.compile.isChecked() else "",
            reasons=reasons,
            validation_passes=self.validation_passes.currentData(),
        )

    def state(self) -> dict:
        return {"preset": self.preset.currentData(), "config": asdict(self.config())}

    def restore(self, data: dict) -> None:
        if data.get("preset") in PRESETS:
            self.preset.setCurrentIndex(list(PRESETS).index(data["preset"]))
        if data.get("config"):
            self.apply_values(TrainConfig.from_dict(data["config"]))

    # -- dataset and runs -----------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the rejects and the runs (after ratings change or a run ends)."""
        rejects = self.store.images("reject")
        n = len(rejects)
        self.dataset_label.setText(
            f"<b>{n}</b> rejected image{'s' if n != 1 else ''} ready for training"
            + ("" if n >= 5 else " — reject at least 5 (15–100 is typical)")
        )
        self.thumbs.clear()
        for row in rejects[:80]:
            pix = QPixmap(row["path"])
            if not pix.isNull():
                pix = pix.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio)
            self.thumbs.addItem(QListWidgetItem(QIcon(pix), ""))
        self.runs.blockSignals(True)
        self.runs.clear()
        for r in self.store.runs():
            self.runs.addItem(f"{r['id']} · {r['status']} · step {r['steps_done']}", r["id"])
        self.runs.blockSignals(False)
        self.show_run(self.runs.currentData())

    def show_run(self, run_id: str | None) -> None:
        """Show a finished (or stopped) run's loss curve and its newest validation images."""
        if not run_id or not self.start_button.isEnabled():
            return  # nothing chosen, or a live run owns the plot
        losses = self.store.losses(run_id)
        self._steps = [s for s, _ in losses]
        self._losses = [v for _, v in losses]
        self._draw_losses()
        self.samples.clear()
        samples = sorted((self.store.home.runs / run_id / "samples").glob("step-*.png"))
        if samples:
            last_step = samples[-1].name.split("-")[1]
            for path in samples:
                if path.name.split("-")[1] == last_step:
                    self._add_sample(str(path), f"step {int(last_step)}", path.name)

    def check_dataset(self) -> None:
        self.check_button.setEnabled(False)
        self.refused.setPlainText("Checking every file…")
        QThreadPool.globalInstance().start(_CheckDataset(self.store.home, self.config(), self._check_signals))

    def _checked(self, images: int, refused: list, warnings: list) -> None:
        self.check_button.setEnabled(True)
        self.show_preflight(images, [{"path": p, "reason": r} for p, r in refused], warnings)

    def show_preflight(self, images: int, refused: list, warnings: list) -> None:
        lines = [f"{Path(r['path']).name}: {r['reason']}" for r in refused] + [f"warning: {w}" for w in warnings]
        self.refused.setPlainText("\n".join(lines) or f"All {images} images passed the check.")

    # -- running --------------------------------------------------------------------------

    def _start(self) -> None:
        from negalora.errors import NegaloraError

        try:
            config = self.config()
            config.check()
        except (NegaloraError, ValueError) as exc:
            self.status.setText(f"<span style='color:#e5484d'>{exc}</span>")
            return
        self.start.emit(asdict(config))

    def _resume(self) -> None:
        run = self.runs.currentData()
        if run:
            self.resume.emit(run)

    def job_started(self) -> None:
        self._steps.clear()
        self._losses.clear()
        self.curve.setData([], [])
        self.smooth.setData([], [])
        self.samples.clear()
        self.start_button.setEnabled(False)
        self.resume_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("Starting… (pre-flight, then caching latents)")

    def on_event(self, e: dict) -> None:
        kind = e["type"]
        if kind == "preflight":
            self.show_preflight(e["images"], e["refused"], e["warnings"])
        elif kind == "caching":
            self.status.setText(f"Caching latents {e['done']}/{e['total']}")
        elif kind == "class_images":
            self.status.setText(f"Making class images with the base model {e['done']}/{e['total']}")
        elif kind == "train_step":
            self._steps.append(e["step"])
            self._losses.append(e["loss"])
            self.curve.setData(self._steps, self._losses)
            window = 20
            mean = [
                sum(self._losses[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1)
                for i in range(len(self._losses))
            ]
            self.smooth.setData(self._steps, mean)
            self.progress.setMaximum(e["steps"])
            self.progress.setValue(e["step"])
            self.status.setText(
                f"Step {e['step']}/{e['steps']} · loss {e['loss']:.4f} · {e['it_s']:.2f} it/s · "
                f"ETA {_duration(e['eta_s'])} · peak memory {e['peak_mem_mb'] / 1024:.2f} GB"
            )
        elif kind == "nan_skip":
            self.status.setText(f"Step {e['step']}: non-finite loss, skipped ({e['in_a_row']} in a row)")
        elif kind == "validation":
            how = {"negative": "negative pass", "both": "both passes"}.get(e.get("passes", ""), "")
            where = f"LoRA on the {how}, CFG {e['guidance']:g}\n" if how and "guidance" in e else ""
            for path, prompt in zip(e["paths"], e["prompts"], strict=False):
                self._add_sample(path, f"step {e['step']}\n{prompt[:28]}", f"{prompt}\n{where}{path}")

    def _add_sample(self, path: str, label: str, tip: str) -> None:
        pix = QPixmap(path)
        if pix.width() < 128:  # small demo images: enlarge crisply
            pix = pix.scaled(128, 128, Qt.AspectRatioMode.KeepAspectRatio)
        item = QListWidgetItem(QIcon(pix), label)
        item.setToolTip(tip)
        self.samples.insertItem(0, item)

    def _draw_losses(self) -> None:
        self.curve.setData(self._steps, self._losses)
        window = 20  # running mean, so the trend shows through the per-step noise
        sums = [0.0]
        for v in self._losses:
            sums.append(sums[-1] + v)
        mean = [
            (sums[i + 1] - sums[max(0, i - window + 1)]) / (i + 1 - max(0, i - window + 1))
            for i in range(len(self._losses))
        ]
        self.smooth.setData(self._steps, mean)

    def job_ended(self, status: str, error: str = "") -> None:
        self.start_button.setEnabled(True)
        self.resume_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        text = {"done": "Finished.", "cancelled": "Cancelled; the last checkpoint is kept — Resume continues."}
        msg = text.get(status, f"Stopped: {error}")
        self.status.setText(msg if status in text else f"<span style='color:#e5484d'>{msg}</span>")
        self.refresh()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
