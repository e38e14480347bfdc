"""The window without a worker: culling keys, undo, filters, the large view, import, settings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_ui import seed_home
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from negalora.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def window(qtbot, home):
    from negalora.ui.app import make_app
    from negalora.ui.main_window import MainWindow

    make_app()
    seed_home(home, 6)
    w = MainWindow(home, start_worker=False)
    qtbot.addWidget(w)
    w.show()
    w.show_page("gallery")
    qtbot.waitExposed(w)
    return w


def _verdicts(home):
    s = Store(home)
    try:
        return {r["id"]: (r["verdict"], r["reasons"]) for r in s.images()}
    finally:
        s.close()


def _current_id(w):
    return w.gallery_page.view.currentIndex().data(Qt.ItemDataRole.UserRole + 1).id


def test_x_p_u_write_ratings_and_advance(window, home, qtbot):
    view = window.gallery_page.view
    first = _current_id(window)  # the newest image is selected first
    qtbot.keyClick(view, Qt.Key.Key_X)
    assert _verdicts(home)[first] == ("reject", [])
    second = _current_id(window)
    assert second != first  # auto-advance
    qtbot.keyClick(view, Qt.Key.Key_P)
    assert _verdicts(home)[second] == ("pick", [])
    third = _current_id(window)
    qtbot.keyClick(view, Qt.Key.Key_3)  # reject with the third reason tag
    assert _verdicts(home)[third] == ("reject", ["blur"])
    view.setCurrentIndex(window.gallery_model.index_of(first))
    qtbot.keyClick(view, Qt.Key.Key_U)
    assert _verdicts(home)[first] == (None, [])


def test_ctrl_z_undoes_the_last_rating(window, home, qtbot):
    view = window.gallery_page.view
    first = _current_id(window)
    qtbot.keyClick(view, Qt.Key.Key_X)
    second = _current_id(window)
    qtbot.keyClick(view, Qt.Key.Key_P)
    window.activateWindow()
    qtbot.keyClick(view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    v = _verdicts(home)
    assert v[second] == (None, []) and v[first] == ("reject", [])
    assert _current_id(window) == second  # the undone image is selected again
    qtbot.keyClick(view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert _verdicts(home)[first] == (None, [])


def test_filters_show_the_right_counts(window, home, qtbot):
    page = window.gallery_page
    view = page.view
    for key in (Qt.Key.Key_X, Qt.Key.Key_X, Qt.Key.Key_P):
        qtbot.keyClick(view, key)
    assert page.buttons["all"].text() == "All (6)"
    assert page.buttons["reject"].text() == "Rejected (2)"
    assert page.buttons["pick"].text() == "Picked (1)"
    assert page.buttons["unrated"].text() == "Unrated (3)"
    assert page.ready_label.text() == "2 rejects ready for training"
    qtbot.mouseClick(page.buttons["reject"], Qt.MouseButton.LeftButton)
    assert window.gallery_model.rowCount() == 2
    assert all(window.gallery_model.row_at(i).verdict == "reject" for i in range(2))
    qtbot.mouseClick(page.buttons["unrated"], Qt.MouseButton.LeftButton)
    assert window.gallery_model.rowCount() == 3
    qtbot.mouseClick(page.buttons["all"], Qt.MouseButton.LeftButton)
    page.search.setText("blue")
    assert window.gallery_model.rowCount() == 1
    window.show_page("train")
    assert "<b>2</b> rejected images ready for training" in window.train_page.dataset_label.text()
    assert window.train_page.thumbs.count() == 2


def test_a_new_artist_on_the_demo_model_starts_from_the_measured_recipe(window, home, qtbot):
    from negalora.ui.main_window import MainWindow

    page = window.train_page
    assert window.generate_page.model_spec() == "demo"
    assert page.preset.currentData() == "cpu-demo"
    assert page.rank.value() == 16 and page.feed_forward.isChecked() and page.lr.text() == "0.0003"
    assert page.config().steps == 800 and page.config().feed_forward
    # the artist's own choice outlives the default
    page.preset.setCurrentIndex([page.preset.itemData(i) for i in range(page.preset.count())].index("woolf"))
    assert page.rank.value() == 4 and not page.feed_forward.isChecked()
    window.close()
    again = MainWindow(home, start_worker=False)
    qtbot.addWidget(again)
    assert again.train_page.preset.currentData() == "woolf" and again.train_page.rank.value() == 4
    again.close()


def test_enter_opens_the_large_view_with_the_recipe(window, qtbot):
    qtbot.keyClick(window.gallery_page.view, Qt.Key.Key_Return)
    assert window.viewer.isVisible()
    text = window.viewer.recipe.toPlainText()
    assert "Steps: 5" in text and "Seed: 105" in text
    qtbot.keyClick(window.viewer, Qt.Key.Key_Right)
    assert "Seed: 104" in window.viewer.recipe.toPlainText()


def test_drop_on_the_reject_filter_imports_rejects(window, home, qtbot, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    Image.new("RGB", (20, 20), "pink").save(folder / "a.png")
    Image.new("RGB", (20, 20), "brown").save(folder / "b.png")
    (folder / "c.png").write_bytes(b"junk")
    page = window.gallery_page
    qtbot.mouseClick(page.buttons["reject"], Qt.MouseButton.LeftButton)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    event = QDropEvent(
        QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    page.dropEvent(event)
    qtbot.waitUntil(lambda: page.buttons["reject"].text() == "Rejected (2)", timeout=10000)
    assert window.gallery_model.rowCount() == 2
    assert "refused 1" in window.statusBar().currentMessage()


def test_settings_and_geometry_are_remembered(qtbot, home):
    from negalora.ui.app import make_app
    from negalora.ui.main_window import MainWindow

    make_app()
    w = MainWindow(home, start_worker=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    w.generate_page.prompts.setPlainText("a (green)++ square")
    w.generate_page.steps.setValue(13)
    minimum = w.minimumSizeHint()
    w.resize(minimum.width() + 11, minimum.height() + 13)  # small: the offscreen screen clamps restored sizes
    size = (w.width(), w.height())
    assert size == (minimum.width() + 11, minimum.height() + 13)
    w.show_page("gallery")
    w.close()
    w2 = MainWindow(home, start_worker=False)
    qtbot.addWidget(w2)
    w2.show()
    qtbot.waitExposed(w2)
    assert w2.generate_page.prompts.toPlainText() == "a (green)++ square"
    assert w2.generate_page.steps.value() == 13
    assert w2.current_page() == "gallery"
    # the offscreen screen is 800 px wide, narrower than the window: only the height is not clamped
    assert w2.height() == size[1] and w2.width() >= minimum.width()


def test_screenshot_renders_the_window(home, tmp_path):
    seed_home(home, 4)
    out = tmp_path / "shot.png"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "--screenshot",
            str(out),
            "--page",
            "gallery",
            "--home",
            str(home.root),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.size[0] >= 1280 and im.size[1] >= 800
        colors = im.convert("RGB").getcolors(1_000_000)
    assert len(colors) > 50  # a real window, not a blank frame


def test_multi_selection_keeps_tags_per_image_and_one_undo_reverts_it(window, home, qtbot):
    view = window.gallery_page.view
    model = window.gallery_model
    a, b = model.row_at(0).id, model.row_at(1).id
    view.setCurrentIndex(model.index_of(a))
    qtbot.keyClick(view, Qt.Key.Key_1)  # a: hands
    view.setCurrentIndex(model.index_of(b))
    qtbot.keyClick(view, Qt.Key.Key_2)  # b: text
    sel = view.selectionModel()
    view.setCurrentIndex(model.index_of(a))
    sel.select(model.index_of(b), sel.SelectionFlag.Select)
    qtbot.keyClick(view, Qt.Key.Key_P)
    v = _verdicts(home)
    assert v[a] == ("pick", []) and v[b] == ("pick", [])
    window.activateWindow()
    qtbot.keyClick(view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    v = _verdicts(home)
    assert v[a] == ("reject", ["hands"]) and v[b] == ("reject", ["text"])
