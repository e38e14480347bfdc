"""Re-render…: img2img from stored images, through a LoRA, to repair a reject.

The dialog asks for what changes (prompt, strength, LoRA and its pass, seed, count) and builds one
``GenerateRequest`` per image, ``init_image`` its id; the window sends them as one job through the
same path as the Generate page. Steps, CFG scale and sampler are each image's own (an imported
image, which has no recipe, takes the Generate page's); the size is the image's own.
"""

import secrets

from PySide6.QtCore import QRegularExpression, Signal
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
)

from negalora.api import BOTH, DEFAULT_STRENGTH, MAX_SEED, NEGATIVE, POSITIVE, GenerateRequest, check_request
from negalora.errors import NegaloraError
from negalora.store import Store

NO_LORA = "None"
CHOOSE_LORA = "Choose a LoRA file…"
MIN_STRENGTH, STRENGTH_STEP = 0.05, 0.05
MAX_COUNT = 16
PASS_LABELS = {
    NEGATIVE: "negative pass only (measured best)",
    BOTH: "both passes (as A1111 and ComfyUI)",
    POSITIVE: "positive pass only (for a picks, KTO or DPO LoRA)",
}
PASS_TIP = (
    "Negative pass only: the LoRA acts only where the negative prompt is drawn; on the demo world this\n"
    "cut defects the most (docs/efficacy.md). Both: the LoRA acts on the positive and the negative pass,\n"
    "as in A1111 and ComfyUI. Positive pass only: it acts only where the prompt is drawn, for a LoRA of\n"
    "what you liked (one trained on picks, or with KTO or DPO)."
)
STRENGTH_TIP = (
    "Denoising strength (A1111's): the share of the steps re-run from the image. Low keeps its\n"
    "composition and repaints detail; 1 keeps only its colours' layout."
)


class RerenderDialog(QDialog):
    """Emits ``submitted`` with the requests (one per image) when OK is pressed and they check out."""

    submitted = Signal(list)  # list[GenerateRequest]

    def __init__(
        self,
        store: Store,
        image_ids: list[int],
        loras: list[tuple[str, str]],
        state: dict,
        fallback: dict | None = None,
        parent=None,
    ):
        """``loras``: (label, path) as the Generate page offers them; ``state``: the last re-render's
        values (see ``state()``); ``fallback``: steps, guidance, scheduler and batch_size for images
        without a recipe of their own."""
        super().__init__(parent)
        self.store = store
        self.image_ids = list(image_ids)
        self.fallback = fallback or {}
        n = len(self.image_ids)
        names = ", ".join(f"#{i}" for i in self.image_ids[:8]) + (" …" if n > 8 else "")
        self.setWindowTitle(f"Re-render {n} image{'s' if n != 1 else ''}")

        self.heading = QLabel(f"<b>Re-render {names}</b>: keep the composition, render the detail again (img2img)")
        self.heading.setWordWrap(True)
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("Blank: each image's own prompt")
        self.prompt.setToolTip("A prompt for every image; leave it blank to keep each image's own")
        self.negative = QLineEdit()
        self.negative.setPlaceholderText("Negative prompt, e.g. wrong")
        self.strength = QDoubleSpinBox(minimum=MIN_STRENGTH, maximum=1.0, singleStep=STRENGTH_STEP, decimals=2)
        self.strength.setValue(DEFAULT_STRENGTH)
        self.strength.setToolTip(STRENGTH_TIP)
        self.lora = QComboBox()
        self.lora.addItem(NO_LORA, "")
        for label, path in loras:
            self.lora.addItem(label, path)
        self.lora.addItem(CHOOSE_LORA, None)
        self.lora.activated.connect(self._lora_chosen)
        self.lora.setToolTip("A trained run's best (else last) checkpoint, or any LoRA file")
        self.lora_scale = QDoubleSpinBox(minimum=-4.0, maximum=4.0, value=1.0, singleStep=0.25)
        self.lora_scale.setToolTip("LoRA strength")
        self.lora_passes = QComboBox()
        for value, label in PASS_LABELS.items():
            self.lora_passes.addItem(label, value)
        self.lora_passes.setToolTip(PASS_TIP)
        self.lora.currentIndexChanged.connect(self._lora_changed)
        lora_row = QHBoxLayout()
        lora_row.addWidget(self.lora, 1)
        lora_row.addWidget(self.lora_scale)
        self.seed_random = QCheckBox("Random")
        self.seed_random.setChecked(True)
        self.seed_random.setToolTip("Random: a new seed per image. Unticked: every image starts at this seed.")
        self.seed = QLineEdit(str(secrets.randbelow(MAX_SEED)))
        self.seed.setMaxLength(10)
        self.seed.setValidator(QRegularExpressionValidator(QRegularExpression(r"\d{0,10}"), self.seed))
        self.seed_random.toggled.connect(lambda on: self.seed.setEnabled(not on))
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed_random)
        seed_row.addWidget(self.seed, 1)
        self.count = QSpinBox(minimum=1, maximum=MAX_COUNT, value=1)
        self.count.setToolTip("Re-renders of each image, at seed, seed+1, …")

        form = QFormLayout()
        form.addRow("Prompt", self.prompt)
        form.addRow("Negative prompt", self.negative)
        form.addRow("Strength", self.strength)
        form.addRow("LoRA", lora_row)
        form.addRow("LoRA acts on", self.lora_passes)
        form.addRow("Seed", seed_row)
        form.addRow("Re-renders per image", self.count)
        note = QLabel(
            "Steps, CFG scale, sampler and size: each image's own "
            "(an imported image takes the Generate page's steps, CFG scale and sampler)."
        )
        note.setWordWrap(True)
        note.setStyleSheet("color: #8b8f96;")
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #e5484d;")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("Re-render")
        ok.setDefault(True)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.heading)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)
        self.restore(state)
        self.setMinimumWidth(520)
        self.setStyleSheet(  # what is off looks off: the fixed seed while random, the LoRA's settings without one
            "QLineEdit:disabled, QDoubleSpinBox:disabled, QComboBox:disabled { color: #6b6f76; }"
        )

    # -- values ---------------------------------------------------------------------------

    def state(self) -> dict:
        """The values to offer again next time (the window keeps them with its settings)."""
        return {
            "prompt": self.prompt.text(),
            "negative": self.negative.text(),
            "strength": round(self.strength.value(), 2),
            "lora": self.lora.currentData() or "",
            "lora_scale": self.lora_scale.value(),
            "lora_passes": self.lora_passes.currentData(),
            "seed_random": self.seed_random.isChecked(),
            "seed": self.seed.text(),
            "count": self.count.value(),
        }

    def restore(self, s: dict) -> None:
        self.prompt.setText(str(s.get("prompt", "")))
        self.negative.setText(str(s.get("negative", "")))
        self.strength.setValue(float(s.get("strength", DEFAULT_STRENGTH)))
        self.set_lora(str(s.get("lora") or ""))
        self.lora_scale.setValue(float(s.get("lora_scale", 1.0)))
        index = self.lora_passes.findData(s.get("lora_passes", NEGATIVE))
        self.lora_passes.setCurrentIndex(max(index, 0))
        self.seed_random.setChecked(bool(s.get("seed_random", True)))
        self.seed.setEnabled(not self.seed_random.isChecked())
        if str(s.get("seed", "")).isdigit():
            self.seed.setText(str(s["seed"]))
        self.count.setValue(int(s.get("count", 1)))
        self._lora_changed()

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

    def _lora_changed(self, *_) -> None:
        on = bool(self.lora.currentData())
        self.lora_scale.setEnabled(on)
        self.lora_passes.setEnabled(on)

    # -- requests -------------------------------------------------------------------------

    def _seed(self) -> int | None:
        if self.seed_random.isChecked():
            return None  # the worker draws one per request and records it
        text = self.seed.text().strip()
        if not text.isdigit() or int(text) > MAX_SEED:
            raise NegaloraError(f"seed {text or '(empty)'}: must be a whole number from 0 to {MAX_SEED}")
        return int(text)

    def requests(self) -> list[GenerateRequest]:
        """One request per image, checked as the worker will check them; NegaloraError names what is wrong."""
        prompt = " ".join(self.prompt.text().split())
        seed = self._seed()
        lora = self.lora.currentData() or None
        out = []
        for image_id in self.image_ids:
            recipe = self.store.recipe(image_id)
            if recipe is None and not prompt:
                raise NegaloraError(f"#{image_id} was imported and has no prompt of its own: type a prompt")
            own = (
                {"steps": recipe.steps, "guidance": recipe.guidance, "scheduler": recipe.scheduler}
                if recipe is not None
                else {k: self.fallback[k] for k in ("steps", "guidance", "scheduler") if k in self.fallback}
            )
            request = GenerateRequest(
                prompts=(prompt,) if prompt else (),
                negative=" ".join(self.negative.text().split()),
                count=self.count.value(),
                seed=seed,
                lora=lora,
                lora_scale=self.lora_scale.value(),
                lora_passes=self.lora_passes.currentData(),
                batch_size=self.fallback.get("batch_size"),
                init_image=str(image_id),
                strength=round(self.strength.value(), 2),
                **own,
            )
            try:
                check_request(request)
            except NegaloraError as exc:
                raise NegaloraError(f"#{image_id}: {exc}") from exc
            out.append(request)
        return out

    def accept(self) -> None:
        self.error.clear()
        try:
            requests = self.requests()
        except NegaloraError as exc:
            self.error.setText(str(exc))
            return
        self.submitted.emit(requests)
        super().accept()
