"""Re-render…: img2img from the gallery and the large view, the Generate page's init image, and a
re-render's link to its source (its large view, and the A/B viewer beside it)."""

import re

import numpy as np
import pytest
from helpers_ui import add_rerender, seed_home
from PySide6.QtCore import QRect, Qt
from PySide6.QtWidgets import QDialogButtonBox

from negalora.api import DEFAULT_STRENGTH, GenerateJob
from negalora.store import Store

LONG = 120_000  # ms: the worker imports torch and diffusers, then loads the model
RED, GREEN, PINK = (255, 0, 0), (0, 128, 0), (255, 192, 203)


def tiny_lora(path):
    """A file the LoRA checks take for a LoRA (key names only); no worker loads it in these tests."""
    from safetensors.numpy import save_file

    zeros = np.zeros((1, 1), np.float32)
    save_file({"lora_unet_a.lora_down.weight": zeros, "lora_unet_a.lora_up.weight": zeros}, str(path))
    return str(path)


def _window(qtbot, home):
    from negalora.ui.app import make_app
    from negalora.ui.main_window import MainWindow

    make_app()
    w = MainWindow(home, start_worker=False)
    qtbot.addWidget(w)
    w.show()
    w.show_page("gallery")
    qtbot.waitExposed(w)
    return w


def _capture_jobs(w, monkeypatch):
    """What the window sends the worker, without one: (model, request) per job."""
    sent = []
    monkeypatch.setattr(w.jobs, "start", lambda: None)
    monkeypatch.setattr(w.jobs.client, "submit", lambda model, request: sent.append((model, request)) or "j9")
    return sent


@pytest.fixture
def seeded(home):
    return seed_home(home, 4)  # ids 1-4: red, green, blue, yellow


@pytest.fixture
def window(qtbot, home, seeded):
    return _window(qtbot, home)


def _select(w, ids):
    from PySide6.QtWidgets import QApplication

    QApplication.processEvents()  # the gallery's own first selection lands before ours, not after
    view, model = w.gallery_page.view, w.gallery_model
    flags = view.selectionModel().SelectionFlag
    view.setCurrentIndex(model.index_of(ids[0]))
    view.selectionModel().select(model.index_of(ids[0]), flags.ClearAndSelect)
    for image_id in ids[1:]:
        view.selectionModel().select(model.index_of(image_id), flags.Select)
    assert sorted(w.gallery_page.selected_ids()) == sorted(ids)


def _ok(dialog):
    return dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)


def _plain(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


def test_r_on_two_images_submits_one_job_with_a_request_per_image(window, seeded, qtbot, monkeypatch, tmp_path):
    lora = tiny_lora(tmp_path / "wrong.safetensors")
    page = window.generate_page
    page.set_lora(lora)
    page.lora_passes.setCurrentIndex(page.lora_passes.findData("both"))
    sent = _capture_jobs(window, monkeypatch)
    a, b = seeded[0], seeded[2]
    _select(window, [a, b])
    qtbot.keyClick(window.gallery_page.view, Qt.Key.Key_R)
    dialog = window.rerender_dialog
    assert dialog is not None and dialog.isVisible() and dialog.image_ids == [b, a]  # newest first, as shown
    # nothing saved yet: the Generate page's LoRA and pass, the default strength, a random seed
    assert dialog.lora.currentData() == lora and dialog.lora_passes.currentData() == "both"
    assert dialog.strength.value() == DEFAULT_STRENGTH and dialog.count.value() == 1
    assert dialog.seed_random.isChecked() and not dialog.seed.isEnabled()
    assert dialog.prompt.placeholderText() == "Blank: each image's own prompt" and dialog.prompt.text() == ""
    assert "measured best" in dialog.lora_passes.itemText(dialog.lora_passes.findData("negative"))
    assert (dialog.strength.minimum(), dialog.strength.maximum(), dialog.strength.singleStep()) == (0.05, 1.0, 0.05)

    dialog.strength.setValue(0.35)
    dialog.lora_passes.setCurrentIndex(dialog.lora_passes.findData("negative"))
    dialog.seed_random.setChecked(False)
    dialog.seed.setText("42")
    dialog.count.setValue(2)
    qtbot.mouseClick(_ok(dialog), Qt.MouseButton.LeftButton)

    assert not dialog.isVisible()
    [(model, job)] = sent  # one job for the whole selection
    assert model == "demo" and isinstance(job, GenerateJob) and not job.reject
    assert sorted(r.init_image for r in job.requests) == sorted([str(a), str(b)])
    for r in job.requests:
        assert r.prompts == ()  # each image's own prompt, filled in by the worker
        assert (r.strength, r.lora, r.lora_passes, r.seed, r.count) == (0.35, lora, "negative", 42, 2)
        assert (r.steps, r.guidance, r.scheduler) == (5, 7.0, "Euler")  # each image's own recipe
        assert r.negative == "wrong" and r.width is None and r.height is None
    # the Generate page's job path: its progress shows the job, a second job waits for this one
    assert window._job == "j9" and not page.go.isEnabled() and page.stop.isEnabled()
    assert "Re-rendering 2 images (4 new, strength 0.35)" in window.statusBar().currentMessage()


def test_the_dialog_offers_the_last_rerenders_values_again(window, seeded, home, qtbot, monkeypatch, tmp_path):
    from negalora.ui.main_window import MainWindow

    lora = tiny_lora(tmp_path / "mine.safetensors")
    _capture_jobs(window, monkeypatch)
    _select(window, [seeded[1]])
    qtbot.mouseClick(window.gallery_page.rerender_button, Qt.MouseButton.LeftButton)
    dialog = window.rerender_dialog
    assert dialog is not None and dialog.lora.currentData() == "" and dialog.lora_passes.currentData() == "negative"
    dialog.prompt.setText("a green circle, crisp")
    dialog.negative.setText("wrong, blurry")
    dialog.strength.setValue(0.7)
    dialog.set_lora(lora)
    dialog.lora_scale.setValue(0.75)
    dialog.lora_passes.setCurrentIndex(dialog.lora_passes.findData("both"))
    dialog.seed_random.setChecked(False)
    dialog.seed.setText("1234")
    dialog.count.setValue(3)
    dialog.accept()
    assert home.settings()["ui"]["rerender"]["strength"] == 0.7
    window.close()

    again = MainWindow(home, start_worker=False)
    qtbot.addWidget(again)
    again.generate_page.lora_passes.setCurrentIndex(0)  # the Generate page's own choice no longer leads
    again.open_rerender([seeded[0]])
    d = again.rerender_dialog
    assert d is not None and d.image_ids == [seeded[0]]
    assert d.prompt.text() == "a green circle, crisp" and d.negative.text() == "wrong, blurry"
    assert d.strength.value() == 0.7 and d.lora.currentData() == lora and d.lora_scale.value() == 0.75
    assert d.lora_passes.currentData() == "both" and d.count.value() == 3
    assert not d.seed_random.isChecked() and d.seed.text() == "1234"
    [request] = d.requests()
    assert request.prompts == ("a green circle, crisp",) and request.init_image == str(seeded[0])
    again.close()


def test_the_dialog_refuses_what_the_worker_would_refuse(window, seeded, home, qtbot, monkeypatch, tmp_path):
    from PIL import Image

    sent = _capture_jobs(window, monkeypatch)
    window.open_rerender([seeded[0]])
    dialog = window.rerender_dialog
    assert dialog is not None
    dialog.strength.setValue(0.05)  # 5 steps x 0.05 re-runs none
    qtbot.mouseClick(_ok(dialog), Qt.MouseButton.LeftButton)
    assert dialog.isVisible() and not sent
    assert dialog.error.text().startswith(f"#{seeded[0]}: strength 0.05 of 5 steps re-runs no step")
    dialog.reject()

    Image.new("RGB", (24, 24), "gray").save(tmp_path / "mine.png")
    store = Store(home)
    imported = store.add_imported((tmp_path / "mine.png").read_bytes(), ".png", 24, 24, "mine.png").id
    store.close()
    window.generate_page.steps.setValue(12)  # an import has no recipe: it takes the Generate page's settings
    window.open_rerender([imported])
    dialog = window.rerender_dialog
    assert dialog is not None
    dialog.accept()
    assert dialog.isVisible() and not sent
    assert dialog.error.text() == f"#{imported} was imported and has no prompt of its own: type a prompt"
    dialog.prompt.setText("a gray square")
    dialog.accept()
    assert not dialog.isVisible()
    [(_, job)] = sent
    assert job.requests[0].steps == 12 and job.requests[0].prompts == ("a gray square",)


def test_the_generate_pages_init_image_slot(window, seeded, qtbot, monkeypatch):
    page = window.generate_page
    window.show_page("generate")
    sent = _capture_jobs(window, monkeypatch)
    assert page.init_spec() == "" and not page.strength.isEnabled()
    assert page.build_request().init_image == ""

    # an empty prompt is refused without an init image
    page.prompts.setPlainText("")
    qtbot.mouseClick(page.go, Qt.MouseButton.LeftButton)
    assert page.error.text() == "no prompt given" and not sent

    _select(window, [seeded[1]])
    qtbot.mouseClick(page.init_use_selected, Qt.MouseButton.LeftButton)
    assert page.init_image.text() == f"#{seeded[1]}" and page.strength.isEnabled()
    preview = page.init_preview.pixmap()
    assert not preview.isNull() and preview.toImage().pixelColor(20, 20).getRgb()[:3] == GREEN
    assert page.prompts.placeholderText().startswith("Blank: the init image's own prompt")
    page.strength.setValue(0.65)
    request = page.build_request()
    assert (request.init_image, request.strength, request.prompts) == (f"#{seeded[1]}", 0.65, ())
    qtbot.mouseClick(page.go, Qt.MouseButton.LeftButton)  # allowed: the image's own prompt
    assert page.error.text() == ""
    [(_, job)] = sent
    assert job.requests[0].init_image == f"#{seeded[1]}" and job.requests[0].strength == 0.65

    # Clear: text-to-image again, and the strength is off
    qtbot.mouseClick(page.init_clear, Qt.MouseButton.LeftButton)
    assert page.init_spec() == "" and not page.strength.isEnabled() and page.init_preview.pixmap().isNull()
    request = page.build_request()
    assert request.init_image == "" and request.strength == DEFAULT_STRENGTH

    # a file that is not there is named before anything is sent
    window.generate_page.job_ended("done", 1)
    window._job = None
    page.set_init_image("/nowhere/x.png")
    qtbot.mouseClick(page.go, Qt.MouseButton.LeftButton)
    assert "init image /nowhere/x.png: no such file" in page.error.text() and len(sent) == 1

    # the strength is kept with the page's settings, the init image is not
    state = page.state()
    assert state["strength"] == 0.65 and "init_image" not in state
    from negalora.ui.generate_page import GeneratePage

    fresh = GeneratePage()
    qtbot.addWidget(fresh)
    fresh.restore(state)
    assert fresh.strength.value() == 0.65 and fresh.init_spec() == "" and not fresh.strength.isEnabled()


@pytest.fixture
def rerendered(home, seeded):
    """seeded[1] (green) and its re-render (pink), strength 0.5."""
    return seeded[1], add_rerender(home, seeded[1], strength=0.5)


def _pane_colors(dialog):
    viewer = dialog.viewer
    image = viewer.grab().toImage()
    out = []
    for pane in viewer.panes():
        c = image.pixelColor(QRect(pane).center())
        out.append((c.red(), c.green(), c.blue()))
    return out


def test_the_large_view_of_a_rerender_names_its_source_and_compares_with_it(qtbot, home, rerendered):
    source, result = rerendered
    w = _window(qtbot, home)
    w.open_image(result)
    viewer = w.viewer
    assert viewer.isVisible() and viewer.lineage.isVisible()
    assert _plain(viewer.lineage.text()) == f"Re-render of #{source} (strength 0.5)"
    assert "Denoising strength: 0.5" in viewer.recipe.toPlainText()
    assert viewer.compare_button.isVisible()
    qtbot.mouseClick(viewer.compare_button, Qt.MouseButton.LeftButton)
    dialog = w.ab_dialog
    assert dialog is not None and dialog.isVisible()
    qtbot.waitExposed(dialog)
    assert dialog.viewer.mode == "side"
    assert dialog.viewer._labels == (f"#{source} · source", f"#{result} · re-render of #{source}, strength 0.5")
    assert _pane_colors(dialog) == [GREEN, PINK]  # the source left (A), the re-render right (B)

    viewer.lineage.linkActivated.emit(str(source))  # the link opens the source
    assert w._viewer_id == source and not viewer.lineage.isVisible() and not viewer.compare_button.isVisible()
    w.close()


def test_the_large_view_rerenders_its_image(window, seeded, qtbot, monkeypatch):
    sent = _capture_jobs(window, monkeypatch)
    window.open_image(seeded[2])
    qtbot.keyClick(window.viewer, Qt.Key.Key_R)
    dialog = window.rerender_dialog
    assert dialog is not None and dialog.isVisible() and dialog.image_ids == [seeded[2]]
    assert dialog.parent() is window.viewer  # on top of the large view
    dialog.reject()
    qtbot.mouseClick(window.viewer.rerender_button, Qt.MouseButton.LeftButton)
    window.rerender_dialog.accept()
    [(_, job)] = sent
    assert [r.init_image for r in job.requests] == [str(seeded[2])]


def test_the_grids_menu_rerenders_and_compares_a_selection(window, seeded, qtbot):
    _select(window, [seeded[0], seeded[3]])
    menu = window.gallery_page.context_menu()
    actions = {a.text().split("\t")[0]: a for a in menu.actions() if a.text()}
    assert actions["Re-render 2 images…"].isEnabled() and actions["Compare the two in the A/B viewer"].isEnabled()
    actions["Compare the two in the A/B viewer"].trigger()
    dialog = window.ab_dialog
    assert dialog is not None and dialog.isVisible()
    qtbot.waitExposed(dialog)
    assert dialog.viewer._labels == (f"#{seeded[0]}", f"#{seeded[3]}")
    assert _pane_colors(dialog) == [RED, (255, 255, 0)]
    actions["Re-render 2 images…"].trigger()
    assert window.rerender_dialog is not None and sorted(window.rerender_dialog.image_ids) == [seeded[0], seeded[3]]
    window.rerender_dialog.reject()
    _select(window, [seeded[1]])
    actions = {a.text().split("\t")[0]: a for a in window.gallery_page.context_menu().actions() if a.text()}
    assert actions["Re-render 1 image…"].isEnabled() and not actions["Compare the two in the A/B viewer"].isEnabled()


def test_a_rerender_through_the_worker_lands_in_the_gallery_linked_to_its_source(qtbot, home, seeded):
    from negalora.ui.app import make_app
    from negalora.ui.main_window import MainWindow

    make_app()
    w = MainWindow(home, start_worker=True, device="cpu")
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.jobs.state == "idle" and w.model_label.text() == "model: demo", timeout=LONG)
    seen = []
    w.jobs.job_event.connect(seen.append)
    source = seeded[0]
    w.open_rerender([source])
    dialog = w.rerender_dialog
    assert dialog is not None
    dialog.strength.setValue(0.6)
    dialog.seed_random.setChecked(False)
    dialog.seed.setText("7")
    qtbot.mouseClick(_ok(dialog), Qt.MouseButton.LeftButton)
    job = w._job
    assert job is not None

    def ended():
        return [e for e in seen if e["type"] in ("finished", "failed") and e.get("job") == job]

    qtbot.waitUntil(lambda: bool(ended()), timeout=LONG)
    [end] = ended()
    assert end["type"] == "finished" and end["status"] == "done", end
    [new] = end["image_ids"]
    store = Store(home)
    try:
        assert store.source_of(new) == source
        recipe = store.recipe(new)
        assert recipe is not None and recipe.strength == 0.6 and recipe.seed == 7
        assert recipe.prompt == store.recipe(source).prompt  # blank prompt: the source's own
    finally:
        store.close()
    assert w.gallery_model.rowCount() == len(seeded) + 1 and w.gallery_model.index_of(new).isValid()
    assert w.generate_page.progress_label.text() == "Done: 1 image"
    w.open_image(new)
    assert _plain(w.viewer.lineage.text()) == f"Re-render of #{source} (strength 0.6)"
    w.close()
