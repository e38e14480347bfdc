"""The Train page's objectives (DreamBooth on rejects or picks, KTO, DPO): what each sends, what its
preview counts and leaves out, the options it refuses; and the positive pass on the Generate page."""

import io

import numpy as np
import pytest
from helpers_ui import seed_home
from PIL import Image
from PySide6.QtCore import Qt
from safetensors.numpy import save_file

from negalora import api
from negalora.pngmeta import png_bytes
from negalora.recipe import Recipe
from negalora.store import Store
from negalora.train.config import TrainConfig


def _same_prompt(store, prompt, colors):
    """Images of one prompt and size (32×32), as a batch of one prompt makes them."""
    ids = []
    for k, color in enumerate(colors):
        recipe = Recipe(prompt, "", 500 + k, 5, 7.0, 32, 32, "Euler", "demo", "ab" * 32)
        ids.append(store.add_generated(recipe, None, png_bytes(Image.new("RGB", (32, 32), color), recipe)).id)
    return ids


def _imported(store, color="gray"):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "PNG")
    return store.add_imported(buf.getvalue(), ".png", 32, 32, "scan.png").id


@pytest.fixture
def seeded(home):
    """Ids 1-8 of eight prompts; 9, 10 of one prompt (a pick and a reject); 11, 12 of another (a vote);
    13 imported. Rejects 1, 2, 4, 5, 6, 8, 10, 13; picks 3, 9. Votes: 1 vs 3 a tie, 4 vs 5 (two prompts)
    for 4, 11 vs 12 for 12."""
    seed_home(home, 8)
    store = Store(home)
    pick, reject = _same_prompt(store, "a pink square", ["pink", "silver"])
    left, right = _same_prompt(store, "a teal triangle", ["teal", "navy"])
    imported = _imported(store)
    store.rate([1, 2, 4, 5, 6, 8, reject, imported], "reject")
    store.rate([3, pick], "pick")
    store.add_vote("a", 1, "b", 3, True, "tie")
    store.add_vote("a", 4, "b", 5, True, "left")
    store.add_vote("a", left, "b", right, True, "right")  # b (the navy triangle) preferred
    store.close()
    return {"pick": pick, "reject": reject, "left": left, "right": right, "imported": imported}


@pytest.fixture
def window(qtbot, home, seeded, monkeypatch):
    """The window without a worker; what it would send to one is kept in ``window.sent``."""
    from negalora.ui.app import make_app
    from negalora.ui.main_window import MainWindow

    make_app()
    w = MainWindow(home, start_worker=False)
    qtbot.addWidget(w)
    w.sent = []
    monkeypatch.setattr(w.jobs, "start", lambda: None)

    def submit(model, request):  # the worker's side of the pipe: the message, read back
        w.sent.append(api.request_of(api.job_message(f"j{len(w.sent)}", model, request)))
        return f"j{len(w.sent)}"

    monkeypatch.setattr(w.jobs.client, "submit", submit)
    w.show()
    w.show_page("train")
    return w


def _choose(page, kind):
    page.objective.setCurrentIndex(page.objective.findData(kind))


def _sent_config(window, qtbot) -> TrainConfig:
    qtbot.mouseClick(window.train_page.start_button, Qt.MouseButton.LeftButton)
    assert window.sent, window.train_page.status.text()
    request = window.sent[-1]
    assert isinstance(request, api.TrainRequest) and request.resume is None
    return request.config


def test_the_objective_labels_are_the_four_choices(window):
    page = window.train_page
    labels = [page.objective.itemText(i) for i in range(page.objective.count())]
    assert labels == [
        "Learn `wrong` from rejects (DreamBooth)",
        "Learn `right` from picks (DreamBooth, for the positive pass)",
        "KTO: picks and rejects",
        "DPO: preferred pairs (votes, then a pick and a reject of one prompt)",
    ]
    assert page.objective.currentData() == "rejects"  # the default: `wrong` from the rejects


def test_rejects_send_dreambooth_on_the_rejects(window, qtbot):
    page = window.train_page
    assert not page.beta.isVisible() and not page.desirable.isVisible()
    config = _sent_config(window, qtbot)
    assert (config.objective, config.source, config.token) == ("dreambooth", "rejects", "wrong")
    assert config.beta is None and (config.desirable_weight, config.undesirable_weight) == (1.0, 1.0)
    assert config.validation_passes == "negative"


def test_picks_send_dreambooth_on_the_picks_with_the_right_token(window, qtbot):
    page = window.train_page
    _choose(page, "picks")
    assert page.token.text() == "right" and page.token.isEnabled()
    assert not page.reasons.isEnabled() and "rejects" in page.reasons.toolTip()
    assert page.text_encoder.isEnabled() and page.prior.isEnabled()  # DreamBooth on picks allows both
    config = _sent_config(window, qtbot)
    assert (config.objective, config.source, config.token) == ("dreambooth", "picks", "right")
    assert config.validation_passes == "positive"  # a LoRA of what is liked: where it measured best
    assert config.beta is None


def test_kto_sends_its_beta_and_weights(window, qtbot):
    page = window.train_page
    _choose(page, "kto")
    assert page.beta.isVisible() and page.desirable.isVisible() and page.undesirable.isVisible()
    assert page.beta.placeholderText() == "auto (1000)"
    page.beta.setText("1500")
    page.desirable.setValue(1.5)
    page.undesirable.setValue(0.5)
    config = _sent_config(window, qtbot)
    assert (config.objective, config.source) == ("kto", "rejects")
    assert config.beta == 1500.0 and config.desirable_weight == 1.5 and config.undesirable_weight == 0.5
    assert not config.train_text_encoder and not config.prior_preservation


def test_dpo_sends_the_default_beta_when_blank(window, qtbot):
    page = window.train_page
    _choose(page, "dpo")
    assert page.beta.isVisible() and not page.desirable.isVisible()  # the weights are KTO's
    assert page.beta.placeholderText() == "auto (5000)" and page.beta.text() == ""
    config = _sent_config(window, qtbot)
    assert (config.objective, config.source, config.beta) == ("dpo", "rejects", None)
    assert config.preference_beta == 5000.0
    assert (config.desirable_weight, config.undesirable_weight) == (1.0, 1.0)


@pytest.mark.parametrize("kind", ["kto", "dpo"])
def test_kto_and_dpo_switch_off_the_options_they_refuse_and_give_them_back(window, qtbot, kind):
    page = window.train_page
    page.text_encoder.setChecked(True)
    page.prior.setChecked(True)
    _choose(page, kind)
    for box in (page.text_encoder, page.prior):
        assert not box.isEnabled() and not box.isChecked()
        assert "reference" in box.toolTip() and kind.upper() in box.toolTip()
    assert not page.token.isEnabled() and "own prompt" in page.token.toolTip()
    assert not page.validation_passes.isEnabled() and page.validation_passes.currentData() == "positive"
    config = _sent_config(window, qtbot)  # config.check() would refuse either: the page sends neither
    assert not config.train_text_encoder and not config.prior_preservation
    window._train_job = None
    window.train_page.job_ended("cancelled")
    _choose(page, "rejects")  # the artist's own choices come back
    assert page.text_encoder.isEnabled() and page.text_encoder.isChecked() and page.prior.isChecked()
    assert page.validation_passes.isEnabled() and page.validation_passes.currentData() == "negative"
    assert page.token.isEnabled() and page.text_encoder.toolTip() == ""


def test_the_preview_counts_what_each_objective_trains_on_and_lists_what_it_leaves_out(window, seeded):
    page = window.train_page
    assert "<b>8</b> rejected images ready for training" in page.dataset_label.text()
    assert page.thumbs.count() == 8 and not page.left_out.isVisible()

    _choose(page, "picks")
    assert "<b>2</b> picked images ready for training" in page.dataset_label.text()
    assert "pick at least 5" in page.dataset_label.text() and page.thumbs.count() == 2

    _choose(page, "kto")
    assert "<b>2 picks</b>, <b>7 rejects</b> ready for KTO" in page.dataset_label.text()
    assert page.thumbs.count() == 9 and page.left_out.isVisible()
    assert page.left_out.text() == (
        f"Left out (1):\n#{seeded['imported']} — no prompt of its own (imported): nothing to condition on"
    )

    _choose(page, "dpo")
    assert "<b>2 pairs</b> ready for DPO" in page.dataset_label.text()
    assert page.thumbs.count() == 4  # the images of the two pairs
    lines = page.left_out.text().splitlines()
    assert lines[0] == "Left out (9):"
    assert "#1 vs #3 — a tie: no preference" in lines
    assert "#4 vs #5 — not the same prompt and size" in lines
    assert "#1, #2, #4, #5, #6 and 1 more — a reject with no pick of the same prompt and size to pair with" in lines
    assert f"#{seeded['imported']} — a reject without a prompt of its own (imported)" in lines

    _choose(page, "rejects")
    assert "<b>8</b> rejected images" in page.dataset_label.text() and not page.left_out.isVisible()


def test_the_check_runs_the_objectives_own_preflight(window, qtbot):
    page = window.train_page
    _choose(page, "dpo")
    page.check_dataset()
    qtbot.waitUntil(lambda: page.check_button.isEnabled(), timeout=20_000)
    checked = page.refused.toPlainText().splitlines()
    assert checked[0] == "4 images passed the check (2 pairs)."
    assert checked[1].startswith("warning: only 4 images")
    assert "#1 vs #3 — a tie: no preference" in page.left_out.text()


def test_a_run_shows_its_reward_margin_beside_the_loss(window):
    page = window.train_page
    page.job_started()
    assert not page.margin_label.isVisible()
    for step, margin in enumerate((-0.02, 0.01, 0.04), 1):
        page.on_event(
            {
                "type": "train_step",
                "step": step,
                "steps": 3,
                "loss": 0.7,
                "it_s": 1.0,
                "eta_s": 1,
                "peak_mem_mb": 100,
                "reward_margin": margin,
            }
        )
    assert page._losses == [0.7, 0.7, 0.7] and page.margin_label.isVisible()
    assert "<b>Reward margin</b> +0.0400" in page.margin_label.text()
    assert "mean of the last 3: <b>+0.0100</b>" in page.margin_label.text()
    page.on_event({"type": "preflight", "objective": "kto", "images": 9, "refused": [], "warnings": [],
                   "left_out": [], "labels": {"pick": 2, "reject": 7}})  # fmt: skip
    assert page.refused.toPlainText() == "All 9 images passed the check (2 picks, 7 rejects)."


def test_the_objective_is_kept_with_the_other_settings(window, qtbot, home):
    from negalora.ui.main_window import MainWindow

    page = window.train_page
    _choose(page, "kto")
    page.beta.setText("800")
    page.undesirable.setValue(2.0)
    page.preset.setCurrentIndex(page.preset.findData("12gb"))  # a preset keeps what the run learns
    assert page.objective.currentData() == "kto" and page.beta.text() == "800" and page.rank.value() == 8
    window.close()
    again = MainWindow(home, start_worker=False)
    qtbot.addWidget(again)
    restored = again.train_page
    assert restored.objective.currentData() == "kto" and restored.beta.text() == "800"
    assert restored.undesirable.value() == 2.0 and not restored.prior.isEnabled()
    assert "ready for KTO" in restored.dataset_label.text()
    again.close()


def _fake_lora(path):
    down = np.zeros((4, 8), dtype=np.float32)
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": down}, str(path))
    return str(path)


def test_the_positive_pass_reaches_the_generate_request(window, qtbot, tmp_path):
    page = window.generate_page
    passes = {page.lora_passes.itemData(i): page.lora_passes.itemText(i) for i in range(page.lora_passes.count())}
    assert passes["positive"] == "positive pass only (for a picks, KTO or DPO LoRA)"
    assert page.lora_passes.currentData() == "negative"  # the default stays the one measured best for `wrong`
    page.set_lora(_fake_lora(tmp_path / "right.safetensors"))
    page.lora_passes.setCurrentIndex(page.lora_passes.findData("positive"))
    page.prompts.setPlainText("a red circle")
    window.show_page("generate")
    qtbot.mouseClick(page.go, Qt.MouseButton.LeftButton)
    assert window.sent, page.error.text()
    job = window.sent[-1]
    assert isinstance(job, api.GenerateJob)
    assert job.requests[0].lora_passes == "positive" and job.requests[0].lora.endswith("right.safetensors")


def test_the_rerender_dialog_offers_the_positive_pass(window):
    from negalora.ui.rerender_dialog import PASS_LABELS

    assert list(PASS_LABELS) == ["negative", "both", "positive"]  # negative first: the default
    assert PASS_LABELS["positive"] == "positive pass only (for a picks, KTO or DPO LoRA)"
