"""A blind vote: two images of the same seed side by side, in random order, without labels. The
artist picks with the keyboard; every vote is stored at once, so closing early loses nothing."""

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from negalora.compare.votes import VotePair, vote_pairs, win_rates
from negalora.store import Store
from negalora.ui.ab_viewer import ABViewer

KEYS = {
    Qt.Key.Key_Left: "left",
    Qt.Key.Key_1: "left",
    Qt.Key.Key_Right: "right",
    Qt.Key.Key_2: "right",
    Qt.Key.Key_Down: "tie",
    Qt.Key.Key_T: "tie",
}


class BlindVoteDialog(QDialog):
    voted = Signal(str)  # left | right | tie

    def __init__(self, store: Store, comparison: dict, a_col: int, b_col: int, rng=None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Blind vote")
        self.store = store
        self.comparison = comparison
        columns = comparison["columns"]
        self.a_label, self.b_label = columns[a_col]["label"], columns[b_col]["label"]
        self.run_id = comparison.get("run_id")
        self.step = columns[a_col].get("step") if columns[a_col].get("step") is not None else comparison.get("step")
        self.pairs: list[VotePair] = vote_pairs(comparison, a_col, b_col, rng)
        self.index = 0
        self.vote_ids: list[int] = []

        self.question = QLabel("Which one is better?")
        self.question.setStyleSheet("font-size: 15px;")
        self.counter = QLabel("")
        self.viewer = ABViewer()
        self.viewer.set_labels_visible(False)
        self.viewer.set_mode("side")
        self.viewer.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.left = QPushButton("← Left is better")
        self.tie = QPushButton("↓ Tie")
        self.right = QPushButton("Right is better →")
        for button, choice in ((self.left, "left"), (self.tie, "tie"), (self.right, "right")):
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            button.clicked.connect(lambda _=False, c=choice: self.vote(c))
        self.outcome = QLabel("")
        self.outcome.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.question, 1)
        top.addWidget(self.counter)
        buttons = QHBoxLayout()
        buttons.addWidget(self.left)
        buttons.addWidget(self.tie)
        buttons.addWidget(self.right)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.viewer, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.outcome)
        self.resize(900, 600)
        self._show()

    @property
    def finished_all(self) -> bool:
        return self.index >= len(self.pairs)

    def _show(self) -> None:
        if self.finished_all:
            self._show_result()
            return
        left, right = self.pairs[self.index].left_right()
        self.viewer.set_images(left, right, "", "")
        self.counter.setText(f"Pair {self.index + 1} of {len(self.pairs)}")

    def vote(self, choice: str) -> None:
        if self.finished_all:
            return
        pair = self.pairs[self.index]
        self.vote_ids.append(
            self.store.add_vote(
                self.a_label,
                pair.a_image_id,
                self.b_label,
                pair.b_image_id,
                pair.a_on_left,
                choice,
                run_id=self.run_id,
                step=self.step,
                comparison_id=self.comparison["id"],
            )
        )
        self.index += 1
        self.voted.emit(choice)
        self._show()

    def _show_result(self) -> None:
        for button in (self.left, self.tie, self.right):
            button.setEnabled(False)
        self.question.setText("Done: the labels were")
        self.counter.setText("")
        lora = "" if self.run_id else self.comparison.get("lora_hash", "")
        rates = [
            w
            for w in win_rates(self.store.votes(self.run_id) if self.run_id else self.store.votes())
            if (w.run_id, w.lora_hash, w.a_label, w.b_label, w.step)
            == (self.run_id, lora, self.a_label, self.b_label, self.step)
        ]
        lines = [w.describe() for w in rates] or ["No pairs to vote on (the two columns are the same images)."]
        self.outcome.setText("\n".join(lines))

    def keyPressEvent(self, event) -> None:
        choice = KEYS.get(event.key())
        if choice is not None:
            self.vote(choice)
            return
        super().keyPressEvent(event)
