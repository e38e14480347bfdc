"""The Generate page: prompts (one per line makes a batch), settings, an init image (img2img) with
its strength, progress with ETA, Cancel, and Woolf's "make wrong images" recipe as one action."""

import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
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
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from negalora.api import DEFAULT_STRENGTH, MAX_SEED, GenerateRequest
from negalora.lora_passes import BOTH, DEFAULT, NEGATIVE, POSITIVE
from negalora.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from negalora.ui.prompt_highlighter import PromptHighlighter
from negalora.wrong_set import DEFAULT_COUNT, wrong_set_requests

BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)  # beside auto, A1111's slider goes to 8

NATIVE = "Model's native size"
SIZES = [
    NATIVE,
    "1024×1024",
    "1152×896",
    "896×1152",
    "1216×832",
    "832×1216",
    "1344×768",
    "768×1344",
    "1536×640",
    "640×1536",
    "64×64",
]
RESULT_SIDE = 160
MAX_RESULTS = 60
CHOOSE_FOLDER = "Choose a diffusers folder…"
CHOOSE_FILE = "Choose a .safetensors file…"
NO_LORA = "None"
CHOOSE_LORA = "Choose a LoRA file…"
IMAGE_FILES = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)"
INIT_SIDE = 44
PROMPT_HINT = "One prompt per line, e.g.\na (red)++ circle on a blue background"
INIT_PROMPT_HINT = "Blank: the init image's own prompt. Or one prompt per line"


class GeneratePage(QWidget):
    generate = Signal(str, list, bool)  # model, requests, reject when done
    cancel = Signal()
    settings_changed = Signal()
    open_image = Signal(int)
    use_selected = Signal()  # the window puts the gallery's selected image in the init-image slot

    def __init__(self, parent=None):
        super().__init__(parent)
        self.image_path_of: Callable[[int], str | None] | None = None  # the window's: a stored image's file
        self.prompts = QPlainTextEdit()
        self.prompts.setPlaceholderText(PROMPT_HINT)
        self.prompts.setPlainText("a (red)++ circle on a blue background")
        self.prompts.setMaximumHeight(170)
        PromptHighlighter(self.prompts.document())
        self.negative = QPlainTextEdit()
        self.negative.setPlaceholderText("Negative prompt, e.g. wrong")
        self.negative.setFixedHeight(64)
        PromptHighlighter(self.negative.document())

        self.seed = QLineEdit(str(secrets.randbelow(MAX_SEED)))
        self.seed.setMaxLength(10)
        self.seed_lock = QCheckBox("Lock")
        self.seed_lock.setToolTip("Locked: every run starts at this seed. Unlocked: a new random seed per run.")
        self.count = QSpinBox(minimum=1, maximum=1000, value=4)
        self.batch_size = QComboBox()
        self.batch_size.addItem("auto", None)
        for n in BATCH_SIZES:
            self.batch_size.addItem(str(n), n)
        self.batch_size.setToolTip(
            "Images per pipeline call (A1111's batch size). Auto: as many as the device, the image size and\n"
            "free memory suit, 1 where a batch would not fit. Every image keeps its own seed and recipe."
        )
        self.steps = QSpinBox(minimum=1, maximum=200, value=25)
        self.guidance = QDoubleSpinBox(minimum=0.0, maximum=30.0, value=7.0, singleStep=0.5)
        self.image_size = QComboBox()
        self.image_size.addItems(SIZES)
        self.scheduler = QComboBox()
        self.scheduler.addItems(list(SCHEDULERS))
        self.scheduler.setCurrentText(DEFAULT_SCHEDULER)
        self.model = QComboBox()
        self.model.addItems(["demo", CHOOSE_FOLDER, CHOOSE_FILE])
        self.model.activated.connect(self._model_chosen)
        self._last_model = "demo"
        self.lora = QComboBox()
        self.lora.addItem(NO_LORA, "")
        self.lora.addItem(CHOOSE_LORA, None)
        self.lora.activated.connect(self._lora_chosen)
        self.lora.setToolTip("A trained run's best (else last) checkpoint, or any LoRA file")
        self.lora_scale = QDoubleSpinBox(minimum=-4.0, maximum=4.0, value=1.0, singleStep=0.25)
        self.lora_passes = QComboBox()
        self.lora_passes.addItem("both passes", BOTH)
        self.lora_passes.addItem("negative pass only", NEGATIVE)
        self.lora_passes.addItem("positive pass only (for a picks, KTO or DPO LoRA)", POSITIVE)
        self.lora_passes.setCurrentIndex(self.lora_passes.findData(DEFAULT))
        self.lora_passes.setToolTip(
            "Both: the LoRA acts on the positive and the negative pass, as in A1111 and ComfyUI.\n"
            "Negative pass only: it acts only where the negative prompt is drawn (for a `wrong` LoRA).\n"
            "Positive pass only: it acts only where the prompt is drawn (for a LoRA of what you liked:\n"
            "one trained on picks, or with KTO or DPO)."
        )
        lora_row = QHBoxLayout()
        lora_row.addWidget(self.lora, 1)
        lora_row.addWidget(self.lora_scale)

        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.seed_lock)
        form = QFormLayout()
        form.addRow("Model", self.model)
        form.addRow("Seed", seed_row)
        count_row = QHBoxLayout()
        count_row.addWidget(self.count, 1)
        count_row.addWidget(QLabel("Batch size"))
        count_row.addWidget(self.batch_size)
        form.addRow("Images per prompt", count_row)
        form.addRow("Steps", self.steps)
        form.addRow("CFG scale", self.guidance)
        form.addRow("Size", self.image_size)
        form.addRow("Sampler", self.scheduler)
        form.addRow("LoRA", lora_row)
        form.addRow("LoRA acts on", self.lora_passes)  # its own row: the positive choice's label is long

        self.go = QPushButton("Generate")
        self.go.setDefault(True)
        self.go.setStyleSheet("QPushButton { font-weight: bold; padding: 8px 18px; }")
        self.go.clicked.connect(self._generate)
        self.stop = QPushButton("Cancel")
        self.stop.setEnabled(False)
        self.stop.clicked.connect(self.cancel.emit)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.progress_label = QLabel("Ready")
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #e5484d;")

        self.results = QListWidget()
        self.results.setViewMode(QListWidget.ViewMode.IconMode)
        self.results.setIconSize(QSize(RESULT_SIDE, RESULT_SIDE))
        self.results.setGridSize(QSize(RESULT_SIDE + 16, RESULT_SIDE + 30))
        self.results.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.results.setMovement(QListWidget.Movement.Static)
        self.results.setStyleSheet("QListWidget { background: #1e1f22; border: none; }")
        self.results.itemDoubleClicked.connect(lambda item: self.open_image.emit(item.data(Qt.ItemDataRole.UserRole)))

        init_box = QGroupBox("Init image (img2img)")
        self.init_preview = QLabel()
        self.init_preview.setFixedSize(INIT_SIDE, INIT_SIDE)
        self.init_preview.setStyleSheet("background: #1e1f22; border: 1px solid #4a4d55;")
        self.init_preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.init_image = QLineEdit()
        self.init_image.setPlaceholderText("None: from noise. A gallery id (#12) or an image file")
        self.init_image.setToolTip(
            "Render from this image instead of from noise (A1111's img2img). Its own prompt is used when\n"
            "the prompt box is empty; the size is its own unless one is chosen."
        )
        self.init_image.textChanged.connect(self._init_changed)
        self.init_choose = QPushButton("Choose file…")
        self.init_choose.clicked.connect(self._choose_init_file)
        self.init_use_selected = QPushButton("Use selected gallery image")
        self.init_use_selected.clicked.connect(self.use_selected.emit)
        self.init_clear = QPushButton("Clear")
        self.init_clear.clicked.connect(self.init_image.clear)
        self.strength = QDoubleSpinBox(minimum=0.05, maximum=1.0, value=DEFAULT_STRENGTH, singleStep=0.05, decimals=2)
        self.strength.setToolTip(
            "Denoising strength (A1111's): the share of the steps re-run from the init image.\n"
            "Low keeps its composition and repaints detail; 1 keeps little of it."
        )
        init_line = QHBoxLayout()
        init_line.addWidget(self.init_preview)
        init_line.addWidget(self.init_image, 1)
        init_buttons = QHBoxLayout()
        init_buttons.addWidget(self.init_choose)
        init_buttons.addWidget(self.init_use_selected)
        init_buttons.addWidget(self.init_clear)
        init_buttons.addStretch(1)
        strength_row = QHBoxLayout()
        self.strength_label = QLabel("Strength")
        strength_row.addWidget(self.strength_label)
        strength_row.addWidget(self.strength)
        size_note = QLabel("The size is the init image's own unless one is chosen above")
        size_note.setStyleSheet("color: #8b8f96;")
        size_note.setWordWrap(True)
        strength_row.addWidget(size_note, 1)
        init_box.setStyleSheet("QLabel:disabled, QDoubleSpinBox:disabled { color: #6b6f76; }")  # off: no init image
        il = QVBoxLayout(init_box)
        il.addLayout(init_line)
        il.addLayout(init_buttons)
        il.addLayout(strength_row)

        wrong_box = QGroupBox("Make wrong images (Woolf's recipe)")
        self.wrong_count = QSpinBox(minimum=1, maximum=1000, value=DEFAULT_COUNT)
        self.wrong_go = QPushButton("Make wrong images")
        self.wrong_go.setToolTip(
            "Every prompt lists 14 defect keywords with one weighted ++++, at CFG 8–13. "
            "The images are marked rejected; prune the set in the Gallery."
        )
        self.wrong_go.clicked.connect(self._make_wrong)
        wl = QHBoxLayout(wrong_box)
        wl.addWidget(QLabel("Images"))
        wl.addWidget(self.wrong_count)
        wl.addWidget(self.wrong_go)
        wl.addStretch(1)

        left = QVBoxLayout()
        left.addWidget(QLabel("<b>Prompts</b> (one per line)"))
        left.addWidget(self.prompts)
        left.addWidget(QLabel("<b>Negative prompt</b>"))
        left.addWidget(self.negative)
        buttons = QHBoxLayout()
        buttons.addWidget(self.go)
        buttons.addWidget(self.stop)
        buttons.addWidget(self.progress, 1)
        left.addLayout(buttons)
        left.addWidget(self.progress_label)
        left.addWidget(self.error)
        left.addWidget(QLabel("<b>Latest images</b> (double-click for the large view)"))
        left.addWidget(self.results, 5)
        right = QVBoxLayout()
        right.addLayout(form)
        right.addWidget(init_box)
        right.addWidget(wrong_box)
        right.addStretch(1)
        layout = QHBoxLayout(self)
        layout.addLayout(left, 3)
        layout.addLayout(right, 2)

        for signal in (
            self.count.valueChanged,
            self.steps.valueChanged,
            self.image_size.currentIndexChanged,
            self.scheduler.currentIndexChanged,
            self.seed_lock.toggled,
            self.strength.valueChanged,
        ):
            signal.connect(lambda *_: self.settings_changed.emit())
        self._job_started = 0.0
        self._init_changed()

    # -- settings -------------------------------------------------------------------------

    def model_spec(self) -> str:
        return self.model.currentText()

    def set_model_spec(self, spec: str) -> None:
        if self.model.findText(spec) < 0:
            self.model.insertItem(self.model.count() - 2, spec)
        self.model.setCurrentText(spec)
        self._last_model = spec

    def _model_chosen(self, index: int) -> None:
        text = self.model.itemText(index)
        chosen = ""
        if text == CHOOSE_FOLDER:
            chosen = QFileDialog.getExistingDirectory(self, "SDXL diffusers folder")
        elif text == CHOOSE_FILE:
            chosen, _ = QFileDialog.getOpenFileName(self, "SDXL checkpoint", "", "Safetensors (*.safetensors)")
        else:
            chosen = text
        self.set_model_spec(chosen or self._last_model)
        self.settings_changed.emit()

    def state(self) -> dict:
        return {
            "prompts": self.prompts.toPlainText(),
            "negative": self.negative.toPlainText(),
            "seed": self.seed.text(),
            "seed_locked": self.seed_lock.isChecked(),
            "count": self.count.value(),
            "batch_size": self.batch_size.currentData(),
            "steps": self.steps.value(),
            "guidance": self.guidance.value(),
            "size": self.image_size.currentText(),
            "scheduler": self.scheduler.currentText(),
            "model": self.model_spec(),
            "lora": self.lora.currentData() or "",
            "lora_scale": self.lora_scale.value(),
            "lora_passes": self.lora_passes.currentData(),
            "strength": round(self.strength.value(), 2),  # the init image is this session's only
        }

    def restore(self, s: dict) -> None:
        self.prompts.setPlainText(s.get("prompts", self.prompts.toPlainText()))
        self.negative.setPlainText(s.get("negative", ""))
        self.seed_lock.setChecked(bool(s.get("seed_locked", False)))
        if s.get("seed_locked") and str(s.get("seed", "")).isdigit():
            self.seed.setText(str(s["seed"]))
        self.count.setValue(int(s.get("count", self.count.value())))
        index = self.batch_size.findData(s.get("batch_size"))
        self.batch_size.setCurrentIndex(max(index, 0))
        self.steps.setValue(int(s.get("steps", self.steps.value())))
        self.guidance.setValue(float(s.get("guidance", self.guidance.value())))
        if s.get("size") in SIZES:
            self.image_size.setCurrentText(s["size"])
        if s.get("scheduler") in SCHEDULERS:
            self.scheduler.setCurrentText(s["scheduler"])
        if s.get("model"):
            self.set_model_spec(s["model"])
        if s.get("lora"):
            self.set_lora(s["lora"])
        self.lora_scale.setValue(float(s.get("lora_scale", 1.0)))
        index = self.lora_passes.findData(s.get("lora_passes"))
        if index >= 0:
            self.lora_passes.setCurrentIndex(index)
        self.strength.setValue(float(s.get("strength", DEFAULT_STRENGTH)))

    # -- requests -------------------------------------------------------------------------

    def _size(self) -> tuple[int | None, int | None]:
        text = self.image_size.currentText()
        if text == NATIVE:
            return None, None
        w, h = text.split("×")
        return int(w), int(h)

    def _seed(self) -> int:
        text = self.seed.text().strip()
        if not self.seed_lock.isChecked() or not text.isdigit() or int(text) > MAX_SEED:
            text = str(secrets.randbelow(MAX_SEED - 10_000))
            self.seed.setText(text)
        return int(text)

    def build_request(self) -> GenerateRequest:
        prompts = tuple(line.strip() for line in self.prompts.toPlainText().splitlines() if line.strip())
        width, height = self._size()
        init = self.init_spec()  # img2img: the init image and its strength, only when one is set
        img2img = {"init_image": init, "strength": round(self.strength.value(), 2)} if init else {}
        return GenerateRequest(
            prompts=prompts,
            negative=" ".join(self.negative.toPlainText().split()),
            count=self.count.value(),
            seed=self._seed(),
            steps=self.steps.value(),
            guidance=self.guidance.value(),
            width=width,
            height=height,
            scheduler=self.scheduler.currentText(),
            lora=self.lora.currentData() or None,
            lora_scale=self.lora_scale.value(),
            lora_passes=self.lora_passes.currentData(),
            batch_size=self.batch_size.currentData(),
            **img2img,
        )

    def render_settings(self) -> dict:
        """The settings a re-render of an image without a recipe of its own takes from this page."""
        return {
            "steps": self.steps.value(),
            "guidance": self.guidance.value(),
            "scheduler": self.scheduler.currentText(),
            "batch_size": self.batch_size.currentData(),
        }

    # -- init image -----------------------------------------------------------------------

    def init_spec(self) -> str:
        """The init image as the request names it: a stored id ("12", "#12") or a file; "" for none."""
        return self.init_image.text().strip()

    def set_init_image(self, spec: str) -> None:
        self.init_image.setText(spec)

    def _choose_init_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Init image", "", IMAGE_FILES)
        if path:
            self.set_init_image(path)

    def _init_changed(self, *_) -> None:
        spec = self.init_spec()
        self.strength.setEnabled(bool(spec))
        self.strength_label.setEnabled(bool(spec))
        self.init_clear.setEnabled(bool(spec))
        self.prompts.setPlaceholderText(INIT_PROMPT_HINT if spec else PROMPT_HINT)
        path = None
        if re.fullmatch(r"#?\d+", spec) and self.image_path_of is not None:
            path = self.image_path_of(int(spec.lstrip("#")))
        elif spec and Path(spec).expanduser().is_file():
            path = str(Path(spec).expanduser())
        pix = QPixmap(path) if path else QPixmap()
        if pix.isNull():
            self.init_preview.clear()
            self.init_preview.setText("–" if spec else "")
        else:
            mode = (
                Qt.TransformationMode.FastTransformation  # small demo images stay crisp
                if pix.width() < INIT_SIDE
                else Qt.TransformationMode.SmoothTransformation
            )
            self.init_preview.setPixmap(
                pix.scaled(INIT_SIDE - 2, INIT_SIDE - 2, Qt.AspectRatioMode.KeepAspectRatio, mode)
            )

    def _check_init(self) -> None:
        from negalora.errors import NegaloraError

        spec = self.init_spec()
        if spec and not re.fullmatch(r"#?\d+", spec) and not Path(spec).expanduser().is_file():
            raise NegaloraError(f"init image {spec}: no such file (give a gallery id such as #12, or a file)")

    # -- LoRA -----------------------------------------------------------------------------

    def set_loras(self, loras: list[tuple[str, str]]) -> None:
        """The trained runs' LoRAs as (label, path); a chosen file stays in the list."""
        current = self.lora.currentData()
        keep = [
            (self.lora.itemText(i), self.lora.itemData(i))
            for i in range(self.lora.count())
            if self.lora.itemData(i)
            and self.lora.itemData(i) not in {p for _, p in loras}
            and self.lora.itemText(i).startswith("file: ")
        ]
        self.lora.clear()
        self.lora.addItem(NO_LORA, "")
        for label, path in [*loras, *keep]:
            self.lora.addItem(label, path)
        self.lora.addItem(CHOOSE_LORA, None)
        self.set_lora(current or "")

    def lora_choices(self) -> list[tuple[str, str]]:
        """The LoRAs this page offers, as (label, path), without "None" and "Choose a LoRA file…"."""
        return [
            (self.lora.itemText(i), self.lora.itemData(i)) for i in range(self.lora.count()) if self.lora.itemData(i)
        ]

    def set_lora(self, path: str) -> None:
        index = self.lora.findData(path)
        if index < 0 and path:
            self.lora.insertItem(self.lora.count() - 1, f"file: {path.rsplit('/', 1)[-1]}", path)
            index = self.lora.findData(path)
        self.lora.setCurrentIndex(max(index, 0))

    def _lora_chosen(self, index: int) -> None:
        if self.lora.itemData(index) is None:  # "Choose a LoRA file…"
            path, _ = QFileDialog.getOpenFileName(self, "LoRA file", "", "LoRA (*.safetensors)")
            self.set_lora(path)

    def _generate(self) -> None:
        from negalora.api import check_request
        from negalora.errors import NegaloraError

        self.error.clear()
        try:
            self._check_init()
            request = self.build_request()
            check_request(request)
        except NegaloraError as exc:
            self.error.setText(str(exc))
            return
        self.generate.emit(self.model_spec(), [request], False)

    def _make_wrong(self) -> None:
        width, height = self._size()
        requests = wrong_set_requests(
            self.wrong_count.value(),
            seed=self._seed(),
            steps=self.steps.value(),
            width=width,
            height=height,
            scheduler=self.scheduler.currentText(),
            batch_size=self.batch_size.currentData(),
        )
        self.generate.emit(self.model_spec(), requests, True)

    # -- job feedback ---------------------------------------------------------------------

    def job_started(self) -> None:
        self._job_started = time.monotonic()
        self.go.setEnabled(False)
        self.wrong_go.setEnabled(False)
        self.stop.setEnabled(True)
        self.error.clear()
        self.progress.setValue(0)
        self.progress_label.setText("Starting… (the first job loads the model)")

    def job_progress(self, image_index: int, image_total: int, step: int, steps: int, batch: int = 1) -> None:
        done = (image_index + batch * step / max(steps, 1)) / max(image_total, 1)
        self.progress.setValue(int(done * 1000))
        elapsed = time.monotonic() - self._job_started
        eta = f" · ETA {elapsed / done * (1 - done):.0f} s" if done > 0.02 else ""
        which = f"Image {image_index + 1}" if batch < 2 else f"Images {image_index + 1}–{image_index + batch}"
        self.progress_label.setText(f"{which}/{image_total} · step {step}/{steps}{eta}")

    def add_result(self, image_id: int, path: str, seed: int) -> None:
        pix = QPixmap(path)
        if pix.width() < RESULT_SIDE:  # small demo images: enlarge crisply
            pix = pix.scaled(RESULT_SIDE, RESULT_SIDE, Qt.AspectRatioMode.KeepAspectRatio)
        item = QListWidgetItem(QIcon(pix), f"#{image_id} · seed {seed}")
        item.setData(Qt.ItemDataRole.UserRole, image_id)
        self.results.insertItem(0, item)
        while self.results.count() > MAX_RESULTS:
            self.results.takeItem(self.results.count() - 1)

    def job_ended(self, status: str, count: int, error: str = "") -> None:
        self.go.setEnabled(True)
        self.wrong_go.setEnabled(True)
        self.stop.setEnabled(False)
        if status == "done":
            self.progress.setValue(1000)
        self.progress_label.setText(
            {"done": f"Done: {count} image{'s' if count != 1 else ''}", "cancelled": f"Cancelled; {count} kept"}.get(
                status, "Failed"
            )
        )
        if error:
            self.error.setText(error)

    def keyPressEvent(self, event) -> None:
        if (
            event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            and event.modifiers() & Qt.KeyboardModifier.ControlModifier
        ):
            self._generate()
            return
        super().keyPressEvent(event)
