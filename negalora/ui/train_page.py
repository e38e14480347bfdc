"""The Train page: presets and settings, the dataset with its refusals, Start / Cancel / Resume,
a live loss curve, step, it/s, ETA and peak memory, and validation images as they appear.
Training runs in the worker process; this page only sends the settings and shows the events."""

import html
from dataclasses import asdict, replace
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QColor, QDoubleValidator, QIcon, QPalette, QPixmap
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
from negalora.train.config import DEFAULT_BETA, LR_SCHEDULES, PICKS_TOKEN, PRESETS, TrainConfig, default_preset

PRESET_LABELS = {
    "woolf": "Woolf (rank 4, LR 1e-4)",
    "12gb": "12 GB GPU",
    "cpu-demo": "Demo model (rank 16 + feed-forward, LR 3e-4)",
}
THUMB = 72
# What a run learns, as the artist chooses it: the key, its label, and the config's (objective, source)
OBJECTIVE_CHOICES = {
    "rejects": ("Learn `wrong` from rejects (DreamBooth)", "dreambooth", "rejects"),
    "picks": ("Learn `right` from picks (DreamBooth, for the positive pass)", "dreambooth", "picks"),
    "kto": ("KTO: picks and rejects", "kto", "rejects"),
    "dpo": ("DPO: preferred pairs (votes, then a pick and a reject of one prompt)", "dpo", "rejects"),
}
PREFERENCE_KINDS = ("kto", "dpo")
LEFT_OUT_SHOWN = 5  # ids listed per reason before "and N more"
MARGIN_WINDOW = 20
REFERENCE_TIP = "{name} measures the LoRA against the base model as its reference"
HELD_TIPS = {
    "text_encoder": REFERENCE_TIP + ", so the text encoders stay frozen.",
    "prior": REFERENCE_TIP + ", which keeps it near the model's prior: no prior preservation.",
    "caption": "{name} captions each image with its own prompt: no token and no reason tags.",
    "picks_reasons": "Reason tags belong to rejects: a picks LoRA learns from every pick.",
    "validation": "A {name} LoRA learns the prompt's own pass: its validation images show it on the positive pass, "
    "where it measured best.",
}


class _CheckSignals(QObject):
    done = Signal(dict)  # the trainer's preflight event (or {"error": message})


class _CheckDataset(QRunnable):
    """Pre-flight on a pool thread with its own connection: the same collection and checks the trainer makes."""

    def __init__(self, home, config: TrainConfig, signals: _CheckSignals):
        super().__init__()
        self.home, self.config, self.signals = home, config, signals

    def run(self) -> None:
        from negalora.errors import NegaloraError
        from negalora.train.inputs import collect

        store = Store(self.home)
        try:
            event = collect(store, self.config).event()
        except NegaloraError as exc:
            event = {"error": str(exc)}
        finally:
            store.close()
        self.signals.done.emit(event)


def left_out_text(left_out: list[dict]) -> str:
    """What an objective leaves out, one line per reason: its first few items, then how many more."""
    by_reason: dict[str, list[str]] = {}
    for item in left_out:
        by_reason.setdefault(item["reason"], []).append(item["what"])
    lines = []
    for reason, items in by_reason.items():
        shown = ", ".join(items[:LEFT_OUT_SHOWN])
        more = f" and {len(items) - LEFT_OUT_SHOWN} more" if len(items) > LEFT_OUT_SHOWN else ""
        lines.append(f"{shown}{more} — {reason}")
    return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


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
        self.objective = QComboBox()
        for key, (label, _, _) in OBJECTIVE_CHOICES.items():
            self.objective.addItem(label, key)
        self.objective.setToolTip(
            "DreamBooth teaches a token from one set of images: `wrong` from the rejects (for the negative pass)\n"
            "or `right` from the picks (for the positive pass). KTO learns from every pick and reject with its\n"
            "own prompt; DPO from pairs of one prompt where one image was preferred. A picks, KTO or DPO LoRA\n"
            "is meant for the positive pass (Generate: LoRA on the positive pass only)."
        )
        self._kind = "rejects"
        self._passes_for_picks = False  # the validation passes were switched to positive for a picks LoRA
        self.objective.currentIndexChanged.connect(lambda _: self._objective_chosen())
        self.beta = QLineEdit()
        self.beta.setValidator(QDoubleValidator(1e-6, 1e9, 6, self.beta))
        self.beta.setToolTip(
            "β: how strongly the LoRA follows the preference, measured against the base model.\n"
            "Blank: the papers' value (shown). Higher keeps the LoRA closer to the base model."
        )
        self.beta.setMaximumWidth(110)
        self.desirable = QDoubleSpinBox(minimum=0.0, maximum=10.0, decimals=2, singleStep=0.1, value=1.0)
        self.desirable.setToolTip("KTO's desirable weight (λ_D): how much the picks count.")
        self.undesirable = QDoubleSpinBox(minimum=0.0, maximum=10.0, decimals=2, singleStep=0.1, value=1.0)
        self.undesirable.setToolTip("KTO's undesirable weight (λ_U): how much the rejects count.")
        self.beta_label = QLabel("Beta")
        self.weights_label = QLabel("Weights: picks")
        self.rejects_weight_label = QLabel("rejects")
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
        self.validation_passes.addItem("LoRA on the positive pass (what is liked)", "positive")
        self.validation_passes.setToolTip(
            "How the validation images apply the LoRA. The negative pass is how negalora, the ComfyUI workflow and "
            "negative_pass() use a `wrong` LoRA; both passes is how A1111 and a plain LoraLoader do (worse on the "
            "demo world); the positive pass, the prompt unchanged, is where a KTO, DPO or picks LoRA measured best."
        )
        self.token.textChanged.connect(lambda _: self._show_samples_title())
        self.validation_passes.currentIndexChanged.connect(lambda _: self._show_samples_title())
        self.reasons.editingFinished.connect(self._preview)
        self._tips = {w: w.toolTip() for w in self._objective_bound()}
        self._held: dict[QWidget, object] = {}  # widgets an objective holds: their own value, kept for later

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
        objective_row = QHBoxLayout()
        objective_row.addWidget(QLabel("Objective"))
        objective_row.addWidget(self.objective)
        objective_row.addSpacing(12)
        for w in (self.beta_label, self.beta, self.weights_label, self.desirable, self.rejects_weight_label):
            objective_row.addWidget(w)
        objective_row.addWidget(self.undesirable)
        objective_row.addStretch(1)
        settings = QGroupBox("Settings")
        sl = QVBoxLayout(settings)
        sl.addLayout(objective_row)
        sl.addLayout(grid)
        sl.addLayout(checks)

        self.dataset_label = QLabel()
        self.left_out = QLabel()
        self.left_out.setWordWrap(True)
        self.left_out.setStyleSheet("color: #9aa0a6;")
        self.left_out.setToolTip("What this objective cannot learn from, and why")
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
        dl.addWidget(self.left_out)
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
        self.margin_label = QLabel()
        self.margin_label.setToolTip(
            "KTO and DPO: how much more the LoRA favours what you liked over what you rejected than the base\n"
            "model does. It should climb above 0 as the run learns; a running mean smooths the per-step noise."
        )
        self.margin_label.setWordWrap(True)
        self.margin_label.setVisible(False)
        self.samples = QListWidget()
        self.samples.setViewMode(QListWidget.ViewMode.IconMode)
        self.samples.setIconSize(QSize(128, 128))
        self.samples.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.samples.setMovement(QListWidget.Movement.Static)
        self.samples.setMinimumWidth(300)

        live = QHBoxLayout()
        plot_box = QVBoxLayout()
        plot_box.addWidget(QLabel("<b>Loss</b> (blue: per step, orange: running mean)"))
        plot_box.addWidget(self.margin_label)
        plot_box.addWidget(self.plot, 1)
        samples_box = QVBoxLayout()
        self.samples_title = QLabel()
        samples_box.addWidget(self.samples_title)
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
        self._margins: list[float] = []
        # the theme colours every state alike: dim what an objective switches off, so its refusals show
        for widget in self._objective_bound():
            palette = widget.palette()
            for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
                palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b6f76"))
            widget.setPalette(palette)
        self._check_signals = _CheckSignals()
        self._check_signals.done.connect(self._checked)
        self.apply_preset("woolf")
        self.refresh()

    # -- settings -------------------------------------------------------------------------

    def apply_preset(self, key: str) -> None:
        """A preset's training settings; what the run learns (objective, token, beta) stays as chosen."""
        if not hasattr(self, "_base"):  # the first preset: nothing chosen yet
            self.apply_values(PRESETS[key])
            return
        try:
            chosen = self.config()
        except ValueError:  # a half-typed number
            chosen = self._base
        keep = ("objective", "source", "beta", "desirable_weight", "undesirable_weight", "token")
        self.apply_values(replace(PRESETS[key], **{k: getattr(chosen, k) for k in keep}))

    def apply_default_preset(self, model_spec: str) -> None:
        """Show the preset a new artist starts from on this model (the measured recipe on the demo)."""
        self.preset.setCurrentIndex(list(PRESETS).index(default_preset(model_spec)))
        self.apply_preset(self.preset.currentData())  # also when the index did not change

    def apply_values(self, c: TrainConfig) -> None:
        """Show a config in the widgets; fields without a widget (validation prompts…) ride along."""
        self._base = c
        self._held.clear()  # the values given are the artist's own
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
        kind = c.objective if c.objective in PREFERENCE_KINDS else ("picks" if c.source == "picks" else "rejects")
        self._kind = kind
        self.objective.blockSignals(True)
        self.objective.setCurrentIndex(max(self.objective.findData(kind), 0))
        self.objective.blockSignals(False)
        self.beta.setText("" if c.beta is None else f"{c.beta:g}")
        self.desirable.setValue(c.desirable_weight)
        self.undesirable.setValue(c.undesirable_weight)
        self._show_objective()

    def config(self) -> TrainConfig:
        kind = self.objective.currentData()
        _, objective, source = OBJECTIVE_CHOICES[kind]
        reasons = tuple(r.strip() for r in self.reasons.text().split(",") if r.strip()) if kind == "rejects" else ()
        beta = None
        if kind in PREFERENCE_KINDS and self.beta.text().strip():
            try:
                beta = float(self.beta.text().replace(",", "."))
            except ValueError:
                raise ValueError(f"beta {self.beta.text()!r}: not a number (leave it blank for the default)") from None
        kto = kind == "kto"
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
            objective=objective,
            source=source,
            beta=beta,
            desirable_weight=self.desirable.value() if kto else 1.0,
            undesirable_weight=self.undesirable.value() if kto else 1.0,
        )

    def state(self) -> dict:
        try:
            config = self.config()
        except ValueError:  # a half-typed number: keep the last settings that made sense
            config = self._base
        return {"preset": self.preset.currentData(), "config": asdict(config)}

    # -- the objective --------------------------------------------------------------------

    def _objective_bound(self) -> list[QWidget]:
        """The widgets an objective can switch off."""
        return [self.text_encoder, self.prior, self.with_reasons, self.reasons, self.token, self.validation_passes]

    def _objective_chosen(self) -> None:
        """The artist chose another objective: the token follows the set it learns, then the page shows it."""
        before, kind = self._kind, self.objective.currentData()
        self._kind = kind
        token = self.token.text().strip()
        if kind == "picks" and token in ("", "wrong"):
            self.token.setText(PICKS_TOKEN)
        elif kind != "picks" and token == PICKS_TOKEN:  # kto/dpo keep it only as validation's negative prompt
            self.token.setText("wrong")
        self._show_objective()
        # a picks LoRA is for the positive pass: its validation images show it there, not on the negative one
        passes = self.validation_passes.currentData()
        if kind == "picks" and before != "picks" and passes == "negative":
            self.validation_passes.setCurrentIndex(self.validation_passes.findData("positive"))
            self._passes_for_picks = True
        elif kind == "rejects" and self._passes_for_picks:
            self._passes_for_picks = False
            if passes == "positive":
                self.validation_passes.setCurrentIndex(self.validation_passes.findData("negative"))
        self._preview()

    def _show_objective(self) -> None:
        """Show the fields this objective uses; switch off (with the reason) what it refuses or ignores."""
        kind = self.objective.currentData()
        preference = kind in PREFERENCE_KINDS
        name = kind.upper()
        for w in (self.beta_label, self.beta):
            w.setVisible(preference)
        for w in (self.weights_label, self.desirable, self.rejects_weight_label, self.undesirable):
            w.setVisible(kind == "kto")
        if preference:
            self.beta.setPlaceholderText(f"auto ({DEFAULT_BETA[kind]:g})")
        reasons_tip = HELD_TIPS["caption"] if preference else HELD_TIPS["picks_reasons"]
        held = {
            self.text_encoder: (preference, False, HELD_TIPS["text_encoder"]),
            self.prior: (preference, False, HELD_TIPS["prior"]),
            self.with_reasons: (kind != "rejects", False, reasons_tip),
            self.reasons: (kind != "rejects", None, reasons_tip),
            self.token: (preference, None, HELD_TIPS["caption"]),
            self.validation_passes: (preference, "positive", HELD_TIPS["validation"]),
        }
        for widget, (off, value, tip) in held.items():
            self._hold(widget, off, value, tip.format(name=name))
        self._show_samples_title()

    def _hold(self, widget: QWidget, off: bool, value, tip: str) -> None:
        """Switch a widget off at ``value`` (None: as it is), keeping its own value for when it is on again."""
        if off:
            if widget not in self._held:
                if isinstance(widget, QCheckBox):
                    self._held[widget] = widget.isChecked()
                    widget.setChecked(bool(value))
                elif isinstance(widget, QComboBox):
                    self._held[widget] = widget.currentIndex()
                    widget.setCurrentIndex(widget.findData(value))
                else:
                    self._held[widget] = None
            widget.setEnabled(False)
            widget.setToolTip(tip)
            return
        if widget in self._held:
            kept = self._held.pop(widget)
            if isinstance(widget, QCheckBox):
                widget.setChecked(bool(kept))
            elif isinstance(widget, QComboBox) and isinstance(kept, int):
                widget.setCurrentIndex(kept)
        widget.setEnabled(True)
        widget.setToolTip(self._tips.get(widget, ""))

    def _show_samples_title(self) -> None:
        if not hasattr(self, "samples_title"):
            return
        passes = {"both": "both passes", "positive": "the positive pass"}.get(
            self.validation_passes.currentData(), "the negative pass"
        )
        token = html.escape(self.token.text().strip() or "wrong")
        _, objective, source = OBJECTIVE_CHOICES[self.objective.currentData()]
        if source == "picks" or objective != "dreambooth":  # as the trainer renders them (checkpoints.validate)
            shown = "the prompt alone, no negative"
        else:
            shown = f"negative: {token}"
        self.samples_title.setText(f"<b>Validation images</b> ({shown}; LoRA on {passes})")

    def restore(self, data: dict) -> None:
        if data.get("preset") in PRESETS:
            self.preset.setCurrentIndex(list(PRESETS).index(data["preset"]))
        if data.get("config"):
            self.apply_values(TrainConfig.from_dict(data["config"]))
        self._preview()

    # -- dataset and runs -----------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read what the objective learns from and the runs (after ratings change or a run ends)."""
        self._preview()
        self.runs.blockSignals(True)
        self.runs.clear()
        for r in self.store.runs():
            self.runs.addItem(f"{r['id']} · {r['status']} · step {r['steps_done']}", r["id"])
        self.runs.blockSignals(False)
        self.show_run(self.runs.currentData())

    def _preview(self) -> None:
        """What the chosen objective will train on, counted from the store (no file is decoded here:
        Check the images runs the pre-flight), with what it leaves out and why."""
        from negalora.errors import NegaloraError

        try:
            text, paths, left = self._collect_preview()
        except NegaloraError as exc:
            text, paths, left = f"<span style='color:#e5484d'>{html.escape(str(exc))}</span>", [], []
        self.dataset_label.setText(text)
        self.show_left_out(left)
        self.thumbs.clear()
        for path in paths[:80]:
            pix = QPixmap(str(path))
            if not pix.isNull():
                pix = pix.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio)
            self.thumbs.addItem(QListWidgetItem(QIcon(pix), ""))

    def _collect_preview(self) -> tuple[str, list, list[dict]]:
        """The dataset line, the images' paths (newest first) and what is left out, for the objective."""
        from negalora.train.dataset import collect_rejects
        from negalora.train.preferences import collect_labels, collect_pairs

        kind = self.objective.currentData()
        if kind in ("rejects", "picks"):
            reasons = [r.strip() for r in self.reasons.text().split(",") if r.strip()] if kind == "rejects" else []
            chosen = collect_rejects(
                self.store, reasons=reasons or None, verdict="reject" if kind == "rejects" else "pick"
            )
            n = len(chosen)
            noun, verb = ("rejected", "reject") if kind == "rejects" else ("picked", "pick")
            tagged = f" tagged {html.escape(', '.join(reasons))}" if reasons else ""
            text = f"<b>{n}</b> {noun} image{'s' if n != 1 else ''}{tagged} ready for training" + (
                "" if n >= 5 else f" — {verb} at least 5 (15–100 is typical)"
            )
            return text, [c.path for c in reversed(chosen)], []
        if kind == "kto":
            candidates, left = collect_labels(self.store)
            picks = sum(c.label == "pick" for c in candidates)
            rejects = len(candidates) - picks
            text = f"<b>{_plural(picks, 'pick')}</b>, <b>{_plural(rejects, 'reject')}</b> ready for KTO" + (
                "" if picks and rejects else " — KTO needs both picks and rejects"
            )
        else:
            candidates, pairs, left = collect_pairs(self.store)
            text = f"<b>{_plural(len(pairs), 'pair')}</b> ready for DPO" + (
                "" if pairs else " — vote in blind A/B comparisons, or pick and reject images of one prompt and size"
            )
        paths = [c.path for c in sorted(candidates, key=lambda c: -(c.image_id or 0))]
        return text, paths, [{"what": x.what, "reason": x.reason} for x in left]

    def show_left_out(self, left_out: list[dict]) -> None:
        self.left_out.setVisible(bool(left_out))
        if left_out:
            self.left_out.setText(f"Left out ({len(left_out)}):\n{left_out_text(left_out)}")

    def show_run(self, run_id: str | None) -> None:
        """Show a finished (or stopped) run's loss curve and its newest validation images."""
        if not run_id or not self.start_button.isEnabled():
            return  # nothing chosen, or a live run owns the plot
        losses = self.store.losses(run_id)
        self.margin_label.setVisible(False)  # the store keeps a run's losses, not its margins
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

    def _checked(self, event: dict) -> None:
        self.check_button.setEnabled(True)
        if "error" in event:
            self.refused.setPlainText(f"Could not check: {event['error']}")
            return
        self.show_preflight(event)

    def show_preflight(self, e: dict) -> None:
        """The pre-flight's result (the check's or a starting run's): refusals, warnings, what is left out."""
        refused, warnings = e.get("refused", []), e.get("warnings", [])
        lines = [f"{Path(r['path']).name}: {r['reason']}" for r in refused] + [f"warning: {w}" for w in warnings]
        what = ""
        if "labels" in e:
            what = f" ({_plural(e['labels']['pick'], 'pick')}, {_plural(e['labels']['reject'], 'reject')})"
        elif "pairs" in e:
            what = f" ({_plural(e['pairs'], 'pair')})"
        if not lines:
            self.refused.setPlainText(f"All {e['images']} images passed the check{what}.")
        else:  # a preference objective says what it has beside the refusals and warnings
            head = [f"{e['images']} images passed the check{what}."] if what else []
            self.refused.setPlainText("\n".join(head + lines))
        if "left_out" in e:
            self.show_left_out(e["left_out"])

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
        self._margins.clear()
        self.margin_label.setVisible(False)
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
            self.show_preflight(e)
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
            if e.get("reward_margin") is not None:
                self.show_margin(float(e["reward_margin"]))
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

    def show_margin(self, margin: float) -> None:
        """KTO / DPO: the latest reward margin and its running mean, beside the loss curve."""
        self._margins.append(margin)
        recent = self._margins[-MARGIN_WINDOW:]
        mean = sum(recent) / len(recent)
        self.margin_label.setText(
            f"<b>Reward margin</b> {margin:+#.3g} · mean of the last {len(recent)}: <b>{mean:+#.3g}</b>"
            " (above 0: the LoRA favours what you liked)"
        )
        self.margin_label.setVisible(True)

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
