"""The Compare page: choose a LoRA (a run's checkpoint or a file) and test prompts, render a
fixed-seed grid in the worker, look at any two columns in the A/B viewer, and vote blind. With init
images (gallery ids) the rows are those images re-rendered (img2img) in every column instead."""

import re
import textwrap
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from negalora.api import (
    CHECKPOINT_SWEEP,
    DEFAULT_SCALES,
    DEFAULT_STRENGTH,
    SCALE_SWEEP,
    THREE_WAY,
    CompareRequest,
    check_strength,
)
from negalora.compare.prompt_sets import DEFAULT_SET, ensure_default_set, liked_lora, measured_passes
from negalora.compare.votes import win_rates
from negalora.errors import NegaloraError
from negalora.lora_passes import BOTH, DEFAULT, NEGATIVE, POSITIVE
from negalora.store import Store
from negalora.ui.ab_viewer import ABViewer
from negalora.ui.rerender_dialog import STRENGTH_TIP

KIND_LABELS = {
    THREE_WAY: "Three-way (base | negative | LoRA)",
    SCALE_SWEEP: "LoRA strength sweep",
    CHECKPOINT_SWEEP: "Checkpoint sweep",
}
PASSES_LABELS = {
    BOTH: "Both guidance passes",
    NEGATIVE: "Negative pass only",
    POSITIVE: "Positive pass only (liked)",
}
NO_SECOND = "none"
FILE_SOURCE = "__file__"
THUMB = 112
PROMPT_HINT = "one test prompt per line"
INIT_PROMPT_HINT = "optional: one prompt for every image (empty: each image's own)"
INIT_HINT = (
    "Empty: the rows are the test prompts. With ids: each image re-rendered (img2img) in every "
    "column, once per seed, with its own prompt unless one prompt is given above."
)


def parse_seeds(text: str) -> tuple[int, ...]:
    """ "1, 2, 5-7" → (1, 2, 5, 6, 7)."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                seeds.extend(range(int(a), int(b) + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise NegaloraError(f"seeds {text!r}: expected numbers like 1, 2, 5-8") from None
    if not seeds:
        raise NegaloraError("give at least one seed")
    return tuple(seeds)


def parse_image_ids(text: str) -> tuple[str, ...]:
    """ "12, 15" or "#12 #15" → ("12", "15"): gallery ids in the order given, each once."""
    ids: list[str] = []
    for part in re.split(r"[,;\s]+", text.strip()):
        if not part:
            continue
        if not re.fullmatch(r"#?\d+", part):
            raise NegaloraError(f"init images: {part!r} is not a gallery id (give ids like 12, 15 or #12 #15)")
        image_id = str(int(part.lstrip("#")))
        if image_id not in ids:
            ids.append(image_id)
    return tuple(ids)


class ComparePage(QWidget):
    render_requested = Signal(dict)  # a CompareRequest as a dict
    cancel = Signal()
    open_image = Signal(int)
    blind_vote = Signal(dict)  # {"comparison": id, "a": col, "b": col}

    def __init__(self, store: Store, parent=None):
        super().__init__(parent)
        self.store = store
        self.comparison: dict | None = None  # the one on screen: id, columns, rows, cells {(r, c): (id, path)}
        self._set_aside: str | None = None  # the test prompts, while init images stand in for them
        self._had_inits = False

        # -- the LoRA
        self.source = QComboBox()
        self.source.currentIndexChanged.connect(self._source_changed)
        self.checkpoint = QComboBox()
        self.mark_best = QPushButton("Mark best")
        self.mark_best.setToolTip("Make this checkpoint the run's default for comparisons and export")
        self.mark_best.clicked.connect(self._mark_best)
        self.lora_file = QLineEdit()
        self.lora_file.setPlaceholderText("a LoRA .safetensors file")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        file_row = QHBoxLayout()
        file_row.addWidget(self.lora_file, 1)
        file_row.addWidget(browse)
        ckpt_row = QHBoxLayout()
        ckpt_row.addWidget(self.checkpoint, 1)
        ckpt_row.addWidget(self.mark_best)
        # a second LoRA on the negative pass beside it (a `wrong` run beside a KTO run): one more column
        self.second = QComboBox()
        self.second.setEditable(True)  # a run id, or a .safetensors path typed or pasted
        self.second.setToolTip(
            "Adds a column: the LoRA above on its passes, and this one on the negative pass beside it\n"
            "(with the negative token). A `wrong` run beside a KTO, DPO or picks run on the positive pass.\n"
            "A run id or a .safetensors file; none for no such column."
        )
        self.second_scale = QDoubleSpinBox(minimum=-4.0, maximum=4.0, decimals=2, singleStep=0.25, value=1.0)
        self.second_scale.setToolTip("The second LoRA's strength")
        second_row = QHBoxLayout()
        second_row.addWidget(self.second, 1)
        second_row.addWidget(self.second_scale)
        self.second_label = QLabel("Neg.-pass LoRA")
        self.second_label.setStyleSheet("QLabel:disabled { color: #6b6f76; }")  # off beside a negative-pass LoRA
        self.second.setStyleSheet("QComboBox:disabled { color: #6b6f76; }")
        self.second_scale.setStyleSheet("QDoubleSpinBox:disabled { color: #6b6f76; }")
        self._passes_for: str | None = None  # the run the passes were last set to the measured best for
        lora_box = QGroupBox("LoRA")
        lf = QFormLayout(lora_box)
        lf.addRow("Run", self.source)
        lf.addRow("Checkpoint", ckpt_row)
        lf.addRow("File", file_row)
        lf.addRow(self.second_label, second_row)

        # -- the test prompts
        self.prompt_set = QComboBox()
        self.prompt_set.setEditable(True)  # type a new name, then Save set
        self.prompt_set.activated.connect(lambda _: self._load_set(self.prompt_set.currentText()))
        self.save_set = QPushButton("Save set")
        self.save_set.clicked.connect(self._save_set)
        self.prompts = QPlainTextEdit()
        self.prompts.setPlaceholderText(PROMPT_HINT)
        self.prompts.setFixedHeight(90)
        self.seeds = QLineEdit("1, 2")
        self.seeds.setToolTip("Seeds for every prompt: 1, 2, 5-8")
        set_row = QHBoxLayout()
        set_row.addWidget(self.prompt_set, 1)
        set_row.addWidget(self.save_set)
        prompts_box = QGroupBox("Test prompts")
        pf = QFormLayout(prompts_box)
        pf.addRow("Set", set_row)
        pf.addRow(self.prompts)
        pf.addRow("Seeds", self.seeds)

        # -- or images to re-render: the rows are then those images, img2img in every column
        self.init_images = QLineEdit()
        self.init_images.setPlaceholderText("gallery ids, e.g. 12, 15 or #12 #15")
        self.init_images.setToolTip(
            "Compare re-renders instead of prompts: every column renders each of these images again\n"
            "(img2img) with each seed. Right-click a selection in the gallery to fill this in."
        )
        self.init_images.setClearButtonEnabled(True)
        self.init_images.textChanged.connect(self._init_changed)
        self.strength = QDoubleSpinBox(minimum=0.05, maximum=1.0, decimals=2, singleStep=0.05, value=DEFAULT_STRENGTH)
        self.strength.setToolTip(STRENGTH_TIP)
        self.strength.setStyleSheet("QDoubleSpinBox:disabled { color: #6b6f76; }")  # off without init images
        self.strength_label = QLabel("Strength")
        self.strength_label.setStyleSheet("QLabel:disabled { color: #6b6f76; }")
        self.init_hint = QLabel(INIT_HINT)
        self.init_hint.setWordWrap(True)
        self.init_hint.setStyleSheet("color: #8b8f96; font-size: 11px;")
        rerender_box = QGroupBox("Or re-render images")
        rf = QFormLayout(rerender_box)
        rf.addRow("Init images", self.init_images)
        rf.addRow(self.strength_label, self.strength)
        rf.addRow(self.init_hint)

        # -- the columns
        self.kind = QComboBox()
        for key, label in KIND_LABELS.items():
            self.kind.addItem(label, key)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self.scale = QDoubleSpinBox(minimum=-4.0, maximum=4.0, decimals=2, singleStep=0.25, value=1.0)
        self.scales = QLineEdit(", ".join(f"{s:g}" for s in DEFAULT_SCALES))
        self.passes = QComboBox()
        for key, label in PASSES_LABELS.items():
            self.passes.addItem(label, key)
        self.passes.setCurrentIndex(self.passes.findData(DEFAULT))
        self.passes.setToolTip(
            "Both: the LoRA acts on the positive and the negative pass, as in A1111 and ComfyUI.\n"
            "Negative pass only: it acts only where the negative prompt is drawn (a `wrong` LoRA's best).\n"
            "Positive pass only: only where the prompt is drawn, the prompt unchanged (best for KTO, DPO, picks).\n"
            "Choosing a run sets this to where that kind of LoRA measured best."
        )
        self.passes.currentIndexChanged.connect(self._passes_changed)
        self.extra_column = QCheckBox("Add a column with the LoRA on the other passes")
        self.extra_column.setChecked(True)
        self.token = QLineEdit("wrong")
        self.steps = QSpinBox(minimum=1, maximum=200, value=25)
        self.guidance = QDoubleSpinBox(minimum=0.0, maximum=30.0, decimals=1, value=7.0)
        self.after_training = QCheckBox("Render the model's default set after every training run")
        self.after_training.setChecked(True)
        columns_box = QGroupBox("Columns")
        cf = QFormLayout(columns_box)
        cf.addRow("Kind", self.kind)
        cf.addRow("LoRA strength", self.scale)
        cf.addRow("Strengths", self.scales)
        cf.addRow("LoRA acts on", self.passes)
        cf.addRow(self.extra_column)
        cf.addRow("Negative token", self.token)
        cf.addRow("Steps", self.steps)
        cf.addRow("CFG scale", self.guidance)
        cf.addRow(self.after_training)

        self.go = QPushButton("Render comparison")
        self.go.setDefault(True)
        self.go.clicked.connect(self._render)
        self.stop = QPushButton("Cancel")
        self.stop.setEnabled(False)
        self.stop.clicked.connect(self.cancel.emit)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(6)
        self.progress_label = QLabel("")
        self.progress_label.setWordWrap(True)  # a long message must not widen the panel past its scroll area
        buttons = QHBoxLayout()
        buttons.addWidget(self.go, 1)
        buttons.addWidget(self.stop)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 6, 0)
        for w in (lora_box, prompts_box, rerender_box, columns_box):
            ll.addWidget(w)
        ll.addLayout(buttons)
        ll.addWidget(self.progress)
        ll.addWidget(self.progress_label)
        ll.addStretch(1)
        for combo in (self.source, self.checkpoint, self.second, self.prompt_set, self.kind, self.passes):
            # long run names and labels must not widen the panel past its scroll area
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        scroll = QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(330)
        scroll.setMaximumWidth(400)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)

        # -- the result: history, grid, A/B viewer, votes
        self.history = QComboBox()
        self.history.activated.connect(lambda _: self.show_comparison(self.history.currentData()))
        self.grid = QTableWidget()
        self.grid.setIconSize(QSize(THUMB, THUMB))
        self.grid.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.grid.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.grid.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.grid.horizontalHeader().setDefaultSectionSize(THUMB + 12)
        self.grid.verticalHeader().setDefaultSectionSize(THUMB + 8)
        self.grid.currentCellChanged.connect(lambda r, c, *_: self._cell_selected(r, c))
        self.grid.cellDoubleClicked.connect(self._cell_opened)
        self.a_column = QComboBox()
        self.b_column = QComboBox()
        for combo in (self.a_column, self.b_column):
            combo.currentIndexChanged.connect(lambda _: self._show_pair())
        self.vote = QPushButton("Blind vote…")
        self.vote.setToolTip("A against B in random order without labels; ← left, → right, ↓ tie")
        self.vote.clicked.connect(self._blind_vote)
        self.votes_label = QLabel("")
        self.votes_label.setWordWrap(True)
        self.votes_label.setStyleSheet("color: #b8bcc8;")
        pair_row = QHBoxLayout()
        pair_row.addWidget(QLabel("A"))
        pair_row.addWidget(self.a_column, 1)
        pair_row.addWidget(QLabel("B"))
        pair_row.addWidget(self.b_column, 1)
        pair_row.addWidget(self.vote)
        self.viewer = ABViewer()
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        hist_row = QHBoxLayout()
        hist_row.addWidget(QLabel("Comparison"))
        hist_row.addWidget(self.history, 1)
        tl.addLayout(hist_row)
        tl.addWidget(self.grid, 1)
        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addLayout(pair_row)
        bl.addWidget(self.viewer, 1)
        bl.addWidget(self.votes_label)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(bottom)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)

        row = QHBoxLayout(self)
        row.setContentsMargins(10, 10, 10, 10)
        row.addWidget(scroll)
        row.addWidget(split, 1)
        self._kind_changed()
        self._init_changed()
        self.refresh()

    # -- data -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read runs, prompt sets and past comparisons from the store."""
        current = self.source.currentData()
        self.source.blockSignals(True)
        self.source.clear()
        compared = [run for run in self.store.runs() if self.store.checkpoints(run["id"])]
        for run in compared:
            self.source.addItem(f"{run['id']} · {run['status']} · {run['images']} images", run["id"])
        self.source.addItem("A LoRA file…", FILE_SOURCE)
        typed = self.second.currentText()
        self.second.clear()
        self.second.addItem(NO_SECOND)
        wrong_first = sorted(
            (run["id"] for run in compared),
            key=lambda run_id: liked_lora(self.store, run_id),  # `wrong` runs first: what goes on the negative pass
        )
        self.second.addItems(wrong_first)
        self.second.setCurrentText(typed or NO_SECOND)
        index = self.source.findData(current)
        self.source.setCurrentIndex(index if index >= 0 else 0)
        self.source.blockSignals(False)
        self._source_changed()
        ensure_default_set(self.store)
        if any((self.store.run_model(r["id"]) or {}).get("source") == "demo" for r in self.store.runs()):
            ensure_default_set(self.store, "demo")
        names = [s["name"] for s in self.store.prompt_sets()]
        chosen = self.prompt_set.currentText() or DEFAULT_SET
        self.prompt_set.clear()
        self.prompt_set.addItems(names)
        self.prompt_set.setCurrentText(chosen)
        if not self.prompts.toPlainText().strip() and not self.init_images.text().strip():
            self._load_set(chosen)  # (with init images an empty box means each image's own prompt)
        self._fill_history()
        if self.comparison is None and self.history.count():
            self.show_comparison(self.history.itemData(0))  # the newest, as the artist left it

    def _fill_history(self) -> None:
        self.history.clear()
        for c in self.store.comparisons()[:200]:
            where = f"run {c['run_id']} step {c['step']}" if c["run_id"] else c["lora_path"].rsplit("/", 1)[-1]
            self.history.addItem(
                f"#{c['id']} · {KIND_LABELS[c['kind']].split(' (')[0]} · {where} · {c['status']}", c["id"]
            )

    def _source_changed(self) -> None:
        source = self.source.currentData()  # a run's id, FILE_SOURCE, or None while the list is empty
        run_id: str | None = None if source == FILE_SOURCE else source
        is_file = run_id is None
        self.lora_file.setEnabled(is_file)
        self.checkpoint.clear()
        if run_id is not None:
            best = self.store.run(run_id).get("best_step")
            for c in self.store.checkpoints(run_id):
                self.checkpoint.addItem(f"step {c['step']}" + ("  ★ best" if c["step"] == best else ""), c["step"])
            self.checkpoint.setCurrentIndex(self.checkpoint.findData(best) if best is not None else -1)
            if self.checkpoint.currentIndex() < 0:
                self.checkpoint.setCurrentIndex(self.checkpoint.count() - 1)
        self.checkpoint.setEnabled(not is_file)
        self.mark_best.setEnabled(not is_file)
        if run_id is not None and run_id != self._passes_for:  # a newly chosen run: where its kind measured best
            self._passes_for = run_id
            self.passes.setCurrentIndex(self.passes.findData(measured_passes(self.store, run_id)))
        self._show_votes()

    def _kind_changed(self) -> None:
        kind = self.kind.currentData()
        self.scales.setEnabled(kind == SCALE_SWEEP)
        self.scale.setEnabled(kind != SCALE_SWEEP)
        self.extra_column.setEnabled(kind == THREE_WAY)
        self._passes_changed()

    def _passes_changed(self, *_) -> None:
        """A second LoRA on the negative pass is a three-way column beside a LoRA not on that pass."""
        on = self.kind.currentData() == THREE_WAY and self.passes.currentData() != NEGATIVE
        for w in (self.second, self.second_scale, self.second_label):
            w.setEnabled(on)

    def _init_changed(self, *_) -> None:
        """Init images stand in for the test prompts: more than one is set aside (a re-render takes
        one prompt for every image, or each its own) and comes back when the line is emptied."""
        has = bool(self.init_images.text().strip())
        self.strength.setEnabled(has)
        self.strength_label.setEnabled(has)
        self.prompts.setPlaceholderText(INIT_PROMPT_HINT if has else PROMPT_HINT)
        if has and not self._had_inits and len(self._prompt_list()) > 1:
            self._set_aside = self.prompts.toPlainText()
            self.prompts.clear()
            self.progress_label.setText(
                "Test prompts set aside: each image keeps its own prompt; they return when Init images is empty"
            )
        elif not has and self._had_inits and self._set_aside is not None:
            if not self.prompts.toPlainText().strip():
                self.prompts.setPlainText(self._set_aside)
            self._set_aside = None
        self._had_inits = has

    def set_init_images(self, image_ids: list[int]) -> None:
        """Compare re-renders of these images, three ways (the gallery's menu); nothing is sent."""
        self.kind.setCurrentIndex(self.kind.findData(THREE_WAY))
        self.init_images.setText(", ".join(f"#{i}" for i in image_ids))
        n = len(image_ids)
        own = "its own prompt" if n == 1 else "their own prompts"
        prompt = f"with {own}" if not self._prompt_list() else "with the prompt above"
        aside = " (the test prompts are set aside)" if self._set_aside is not None else ""
        self.progress_label.setText(
            f"Re-renders of {n} image{'s' if n != 1 else ''} {prompt}{aside}: choose the LoRA, then Render comparison"
        )

    def init_image_ids(self) -> tuple[str, ...]:
        """The init images on the page, each checked to be in the gallery; raises NegaloraError."""
        ids = parse_image_ids(self.init_images.text())
        for image_id in ids:
            try:
                self.store.image(int(image_id))
            except NegaloraError:
                raise NegaloraError(f"init image #{image_id}: not in the gallery") from None
        return ids

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "LoRA file", "", "LoRA (*.safetensors)")
        if path:
            self.lora_file.setText(path)

    def _load_set(self, name: str) -> None:
        try:
            data = self.store.prompt_set(name)
        except NegaloraError:
            return
        self.prompts.setPlainText("\n".join(data["prompts"]))
        self.seeds.setText(", ".join(str(s) for s in data["seeds"]))

    def _save_set(self) -> None:
        name = self.prompt_set.currentText().strip() or DEFAULT_SET
        try:
            self.store.save_prompt_set(name, self._prompt_list(), list(parse_seeds(self.seeds.text())))
        except NegaloraError as exc:
            self.progress_label.setText(str(exc))
            return
        self.progress_label.setText(f"Saved test prompts as “{name}”")

    def _prompt_list(self) -> list[str]:
        return [p.strip() for p in self.prompts.toPlainText().splitlines() if p.strip()]

    def _mark_best(self) -> None:
        run_id, step = self.source.currentData(), self.checkpoint.currentData()
        if run_id in (None, FILE_SOURCE) or step is None:
            return
        self.store.set_best_step(run_id, step)
        self._source_changed()
        self.progress_label.setText(f"Step {step} is now the best checkpoint of {run_id}")

    # -- requests -------------------------------------------------------------------------

    def request(self) -> dict:
        """The comparison asked for on the page, as a CompareRequest dict; raises NegaloraError."""
        run_id = self.source.currentData()
        if run_id in (None, FILE_SOURCE):
            lora, step = self.lora_file.text().strip(), None
            if not lora:
                raise NegaloraError("choose a training run or a LoRA file")
        else:
            lora, step = run_id, self.checkpoint.currentData()
        scales = DEFAULT_SCALES
        if self.kind.currentData() == SCALE_SWEEP:
            try:
                scales = tuple(float(x) for x in self.scales.text().split(",") if x.strip())
            except ValueError:
                raise NegaloraError(f"strengths {self.scales.text()!r}: numbers separated by commas") from None
        prompts = tuple(self._prompt_list())
        init_images = self.init_image_ids()
        if init_images:
            if len(prompts) > 1:
                raise NegaloraError(
                    "re-renders take one prompt for every image, or none (each image's own): "
                    f"leave one line of the {len(prompts)} test prompts, or clear them"
                )
            check_strength(self.strength.value(), self.steps.value())
        elif not prompts:
            raise NegaloraError("give at least one test prompt, or init images to re-render")
        return CompareRequest(
            prompts=prompts,
            seeds=parse_seeds(self.seeds.text()),
            kind=self.kind.currentData(),
            lora=lora,
            step=step,
            scale=self.scale.value(),
            scales=scales,
            token=self.token.text().strip(),
            lora_passes=self.passes.currentData(),
            extra_column=self.extra_column.isChecked(),
            **self._second_fields(),
            steps=self.steps.value(),
            guidance=self.guidance.value(),
            init_images=init_images,
            strength=self.strength.value() if init_images else DEFAULT_STRENGTH,
        ).to_dict()

    def _second_fields(self) -> dict:
        """The second LoRA's fields of the request (none where it is off or unset)."""
        text = self.second.currentText().strip()
        if not self.second.isEnabled() or text in ("", NO_SECOND):
            return {}
        return {"negative_lora": text, "negative_lora_scale": self.second_scale.value()}

    def _render(self) -> None:
        try:
            request = self.request()
        except NegaloraError as exc:
            self.progress_label.setText(str(exc))
            return
        self.render_requested.emit(request)

    def request_after_training(self, run_id: str) -> dict | None:
        """The model's default test set, three ways, on the run's newest checkpoint (None when switched off)."""
        from negalora.compare.prompt_sets import after_training_request

        if not self.after_training.isChecked():
            return None
        return after_training_request(
            self.store,
            run_id,
            token=self.token.text().strip() or "wrong",
            lora_passes=self.passes.currentData(),
            steps=self.steps.value(),
            guidance=self.guidance.value(),
        ).to_dict()

    # -- a job in the worker --------------------------------------------------------------

    def job_started(self) -> None:
        self.go.setEnabled(False)
        self.stop.setEnabled(True)
        self.progress.setValue(0)
        self.progress_label.setText("Waiting for the worker…")

    def begin_grid(self, comparison_id: int, columns: list[dict], rows: list[dict]) -> None:
        if not any("init" in r for r in rows):  # the worker's rows: a re-render's are labelled by image
            try:
                rows = _with_init_labels(rows, self.store.comparison(comparison_id)["config"])
            except NegaloraError:
                pass
        self.comparison = {"id": comparison_id, "columns": columns, "rows": rows, "cells": {}}
        self._build_table(self.comparison)

    def set_cell(self, row: int, col: int, image_id: int, path: str, comparison_id: int | None = None) -> None:
        if self.comparison is None or (comparison_id is not None and comparison_id != self.comparison["id"]):
            return  # a cell of the job while another comparison is on screen: it is in the store
        self.comparison["cells"][(row, col)] = (image_id, path)
        item = QTableWidgetItem()
        pixmap = QPixmap(path)
        if not pixmap.isNull():
            item.setIcon(
                QIcon(
                    pixmap.scaled(
                        THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
                    )
                )
            )
        item.setToolTip(f"#{image_id} · double-click to open")
        self.grid.setItem(row, col, item)
        if row == max(self.grid.currentRow(), 0):
            self._show_pair()

    def job_progress(self, index: int, total: int, step: int, steps: int, batch: int = 1) -> None:
        done = index * steps + batch * step
        self.progress.setMaximum(max(1, total * steps))
        self.progress.setValue(min(done, total * steps))
        cells = f"Cell {min(index + 1, total)}" if batch < 2 else f"Cells {index + 1}–{min(index + batch, total)}"
        self.progress_label.setText(f"{cells} of {total} · step {step}/{steps}")

    def job_ended(self, status: str, comparison_id: int | None = None, error: str = "") -> None:
        self.go.setEnabled(True)
        self.stop.setEnabled(False)
        self.progress.setValue(self.progress.maximum() if status == "done" else 0)
        self.progress_label.setText(
            {"done": "Done", "cancelled": "Cancelled: the finished cells are kept"}.get(status, f"Failed: {error}")
        )
        self._fill_history()
        if comparison_id is not None:
            self.history.setCurrentIndex(self.history.findData(comparison_id))
            if status == "done":
                self.show_comparison(comparison_id)

    # -- showing a stored comparison ------------------------------------------------------

    def show_comparison(self, comparison_id: int | None) -> None:
        if comparison_id is None:
            return
        data = self.store.comparison(comparison_id)
        rows = _with_init_labels([{"prompt": p, "seed": s} for p, s in _rows_of(data)], data["config"])
        self.begin_grid(comparison_id, data["columns"], rows)
        assert self.comparison is not None  # begin_grid has just set it
        self.comparison["run_id"], self.comparison["step"] = data["run_id"], data["step"]
        for cell in data["cells"]:
            self.set_cell(cell["row"], cell["col"], cell["image_id"], cell["path"])
        self._show_votes()

    def _build_table(self, c: dict) -> None:
        self.grid.clear()
        self.grid.setColumnCount(len(c["columns"]))
        self.grid.setRowCount(len(c["rows"]))
        self.grid.setHorizontalHeaderLabels(["\n".join(textwrap.wrap(col["label"], 16)) for col in c["columns"]])
        self.grid.setVerticalHeaderLabels(
            [
                (f"{r['init']} re-rendered\n" if r.get("init") else "") + f"{_short(r['prompt'])}\nseed {r['seed']}"
                for r in c["rows"]
            ]
        )
        for combo in (self.a_column, self.b_column):
            combo.blockSignals(True)
            combo.clear()
            for i, col in enumerate(c["columns"]):
                combo.addItem(col["label"], i)
            combo.blockSignals(False)
        keys = [col["key"] for col in c["columns"]]
        # default pair: the negative-only baseline against the LoRA (or the first two sweep columns)
        a = keys.index("lora") if "lora" in keys else min(1, len(keys) - 1)
        b = keys.index("negative") if "negative" in keys else 0
        self.a_column.setCurrentIndex(a)
        self.b_column.setCurrentIndex(b)
        self.vote.setEnabled(len(keys) > 1)

    def _cell_selected(self, row: int, col: int) -> None:
        if row >= 0:
            self._show_pair(row)

    def _cell_opened(self, row: int, col: int) -> None:
        cell = (self.comparison or {}).get("cells", {}).get((row, col))
        if cell:
            self.open_image.emit(cell[0])

    def _show_pair(self, row: int | None = None) -> None:
        if self.comparison is None:
            return
        row = self.grid.currentRow() if row is None else row
        row = max(row, 0)
        a, b = self.a_column.currentData(), self.b_column.currentData()
        cells = self.comparison["cells"]
        if a is None or b is None or (row, a) not in cells or (row, b) not in cells:
            return
        labels = [col["label"] for col in self.comparison["columns"]]
        self.viewer.set_images(cells[(row, a)][1], cells[(row, b)][1], labels[a], labels[b])

    def _blind_vote(self) -> None:
        if self.comparison is None:
            return
        a, b = self.a_column.currentData(), self.b_column.currentData()
        if a is None or b is None or a == b:
            self.progress_label.setText("Choose two different columns as A and B")
            return
        self.blind_vote.emit({"comparison": self.comparison["id"], "a": a, "b": b})

    def _show_votes(self) -> None:
        run_id = (self.comparison or {}).get("run_id") or self.source.currentData()
        if run_id in (None, FILE_SOURCE):
            self.votes_label.setText("")
            return
        rates = win_rates(self.store.votes(run_id))
        self.votes_label.setText("\n".join(w.describe() for w in rates) or f"No blind votes for {run_id} yet")

    # -- settings -------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "prompts": self.prompts.toPlainText() if self._set_aside is None else self._set_aside,
            "seeds": self.seeds.text(),
            "kind": self.kind.currentData(),
            "scale": self.scale.value(),
            "scales": self.scales.text(),
            "passes": self.passes.currentData(),
            "extra_column": self.extra_column.isChecked(),
            "token": self.token.text(),
            "steps": self.steps.value(),
            "guidance": self.guidance.value(),
            "strength": self.strength.value(),
            "after_training": self.after_training.isChecked(),
            "lora_file": self.lora_file.text(),
            "second": self.second.currentText(),
            "second_scale": self.second_scale.value(),
        }

    def restore(self, data: dict) -> None:
        if data.get("prompts"):
            self.prompts.setPlainText(data["prompts"])
        for key, widget in (
            ("seeds", self.seeds),
            ("scales", self.scales),
            ("token", self.token),
            ("lora_file", self.lora_file),
        ):
            if data.get(key):
                widget.setText(data[key])
        if data.get("second"):
            self.second.setCurrentText(data["second"])
        for key, combo in (("kind", self.kind), ("passes", self.passes)):
            index = combo.findData(data.get(key))
            if index >= 0:
                combo.setCurrentIndex(index)
        spins = (
            ("scale", self.scale),
            ("steps", self.steps),
            ("guidance", self.guidance),
            ("strength", self.strength),
            ("second_scale", self.second_scale),
        )
        for key, spin in spins:
            if data.get(key) is not None:
                spin.setValue(data[key])
        for key, box in (("extra_column", self.extra_column), ("after_training", self.after_training)):
            if data.get(key) is not None:
                box.setChecked(bool(data[key]))


def _rows_of(comparison: dict) -> list[tuple[str, int]]:
    config = comparison["config"]
    rows: dict[int, tuple[str, int]] = {}
    for cell in comparison["cells"]:
        rows.setdefault(cell["row"], (cell["prompt"], cell["seed"]))
    if config.get("init_images"):  # init image x seed, image-major; each image's own prompt is in its cells
        one = next((p for p in config.get("prompts", ()) if p.strip()), "")
        seeds = config["seeds"]
        keys = [(i, s) for i in range(len(config["init_images"])) for s in seeds]
        return [(rows[r][0] if r in rows else one, s) for r, (_, s) in enumerate(keys)]
    if config.get("prompts"):
        return [(p, s) for p in config["prompts"] for s in config["seeds"]]
    # a request that named a prompt set: the rows are in the cells
    return [rows[r] for r in sorted(rows)]


def _with_init_labels(rows: list[dict], config: dict) -> list[dict]:
    """A re-render comparison's rows, each with the image it re-renders ("#12", or a file's name)."""
    inits, seeds = config.get("init_images") or (), config.get("seeds") or ()
    if not inits or len(rows) != len(inits) * len(seeds):
        return rows
    labels = [f"#{spec.lstrip('#')}" if re.fullmatch(r"#?\d+", spec.strip()) else Path(spec).name for spec in inits]
    return [{**row, "init": labels[r // len(seeds)]} for r, row in enumerate(rows)]


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
