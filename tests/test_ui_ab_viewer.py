"""The A/B viewer, checked on its pixels: side by side, flip, wipe, linked zoom and pan."""

import pytest
from PySide6.QtCore import QPoint, QPointF, QRect, Qt
from PySide6.QtGui import QColor, QImage, QWheelEvent
from PySide6.QtWidgets import QApplication

from negalora.ui.ab_viewer import ABViewer

RED, BLUE = (255, 0, 0), (0, 0, 255)
BACKGROUND = (0x11, 0x12, 0x14)


@pytest.fixture
def viewer(qtbot):
    from negalora.ui.app import make_app

    make_app()
    v = ABViewer()
    qtbot.addWidget(v)
    v.resize(400, 400)
    v.show()
    qtbot.waitExposed(v)
    return v


def solid(color, size=64):
    image = QImage(size, size, QImage.Format.Format_RGB32)
    image.fill(QColor(color))
    return image


def gradient(tint):
    """Red follows x, green follows y, blue is the tint: the same pattern in two tints."""
    image = QImage(64, 64, QImage.Format.Format_RGB32)
    for y in range(64):
        for x in range(64):
            image.setPixelColor(x, y, QColor(x * 4, y * 4, tint))
    return image


def checker(size):
    data = bytes(255 * ((x + y) % 2) for y in range(size) for x in range(size))
    return QImage(data, size, size, size, QImage.Format.Format_Grayscale8).copy()


def grab(v):
    return v.grab().toImage()


def rgb(image, point):
    c = image.pixelColor(int(point.x()), int(point.y()))
    return c.red(), c.green(), c.blue()


def centre(rect: QRect) -> QPointF:
    return QPointF(rect.x() + rect.width() / 2, rect.y() + rect.height() / 2)


def fit_zoom(pane: QRect, size=64):
    return min(pane.width(), pane.height()) / size


def wheel(widget, pos: QPointF, notches: float):
    event = QWheelEvent(
        pos,
        widget.mapToGlobal(pos),
        QPoint(),
        QPoint(0, round(120 * notches)),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)


def drag(qtbot, widget, start: QPointF, end: QPointF, modifier=Qt.KeyboardModifier.NoModifier):
    qtbot.mousePress(widget, Qt.MouseButton.LeftButton, modifier, start.toPoint())
    qtbot.mouseMove(widget, end.toPoint())
    qtbot.mouseRelease(widget, Qt.MouseButton.LeftButton, modifier, end.toPoint())


def test_side_by_side_shows_a_left_and_b_right_in_equal_fitted_panes(viewer):
    viewer.set_images(solid("red"), solid("blue"), "negative only", "LoRA + negative")
    assert viewer.mode == "side" and viewer.buttons["side"].isChecked()
    left, right = viewer.panes()
    assert left.size() == right.size() and left.right() < right.left()
    assert viewer.zoom == pytest.approx(fit_zoom(left))
    assert viewer.pan == QPointF(32, 32)
    image = grab(viewer)
    assert rgb(image, centre(left)) == RED
    assert rgb(image, centre(right)) == BLUE


def test_flip_shows_a_then_space_shows_b(viewer, qtbot):
    viewer.set_images(solid("red"), solid("blue"), "a", "b")
    qtbot.keyClick(viewer, Qt.Key.Key_F)
    assert viewer.mode == "flip" and viewer.buttons["flip"].isChecked()
    (pane,) = viewer.panes()
    assert viewer.showing == "a" and rgb(grab(viewer), centre(pane)) == RED
    with qtbot.waitSignal(viewer.flipped, timeout=1000) as blocker:
        qtbot.keyClick(viewer, Qt.Key.Key_Space)
    assert blocker.args == ["b"] and viewer.showing == "b"
    assert rgb(grab(viewer), centre(pane)) == BLUE
    qtbot.keyClick(viewer, Qt.Key.Key_Space)
    assert viewer.showing == "a" and rgb(grab(viewer), centre(pane)) == RED


def test_hidden_labels_leave_only_the_letter(viewer, qtbot):
    viewer.set_images(solid("red", 8), solid("blue", 8), "negative only", "LoRA + negative")
    viewer.resize(600, 300)  # a wide pane: the label corner is background, not image
    qtbot.keyClick(viewer, Qt.Key.Key_F)
    pane = viewer.panes()[0]
    past_the_letter = QPointF(pane.x() + 60, pane.y() + 16)  # inside "A · negative only", right of a bare "A"
    assert rgb(grab(viewer), past_the_letter) != BACKGROUND
    viewer.set_labels_visible(False)
    assert not viewer.labels_visible
    assert rgb(grab(viewer), past_the_letter) == BACKGROUND
    assert rgb(grab(viewer), QPointF(pane.x() + 14, pane.y() + 16)) != BACKGROUND  # the "A" box stays


def test_wipe_splits_at_the_position_from_slider_and_mouse(viewer, qtbot):
    viewer.set_images(solid("red"), solid("blue"))
    qtbot.keyClick(viewer, Qt.Key.Key_W)
    assert viewer.mode == "wipe" and viewer.slider.isVisible()
    (pane,) = viewer.panes()
    y = centre(pane).y() + 40  # below the divider's handle

    def at(fraction):
        return QPointF(pane.x() + fraction * pane.width(), y)

    viewer.set_wipe(0.25)
    image = grab(viewer)
    assert rgb(image, at(0.25) - QPointF(4, 0)) == RED
    assert rgb(image, at(0.25) + QPointF(4, 0)) == BLUE
    assert rgb(image, at(0.9)) == BLUE

    viewer.slider.setValue(750)
    assert viewer.wipe == pytest.approx(0.75)
    image = grab(viewer)
    assert rgb(image, at(0.5)) == RED and rgb(image, at(0.8)) == BLUE

    drag(qtbot, viewer, at(0.75), at(0.5))  # grab the divider
    assert viewer.wipe == pytest.approx(0.5, abs=0.01) and viewer.slider.value() == pytest.approx(500, abs=10)
    drag(qtbot, viewer, at(0.2), at(0.2), Qt.KeyboardModifier.ShiftModifier)  # Shift+click puts it there
    assert viewer.wipe == pytest.approx(0.2, abs=0.01)
    drag(qtbot, viewer, at(0.8), at(0.8))  # a plain click away from the divider leaves it
    assert viewer.wipe == pytest.approx(0.2, abs=0.01)


def test_1_is_one_to_one_and_0_fits(viewer, qtbot):
    viewer.set_images(solid("red"), solid("blue"))
    qtbot.keyClick(viewer, Qt.Key.Key_F)
    (pane,) = viewer.panes()
    c = centre(pane)
    assert viewer.zoom == pytest.approx(fit_zoom(pane)) and viewer.zoom > 2
    qtbot.keyClick(viewer, Qt.Key.Key_1)
    assert viewer.zoom == 1.0
    image = grab(viewer)  # 64 screen pixels: red 28 px right of the centre, background at 36
    assert rgb(image, c + QPointF(28, 0)) == RED and rgb(image, c + QPointF(36, 0)) == BACKGROUND
    qtbot.keyClick(viewer, Qt.Key.Key_0)
    assert viewer.zoom == pytest.approx(fit_zoom(pane))
    assert rgb(grab(viewer), c + QPointF(36, 0)) == RED
    qtbot.mouseClick(viewer.actual_button, Qt.MouseButton.LeftButton)
    assert viewer.zoom == 1.0
    qtbot.mouseClick(viewer.fit_button, Qt.MouseButton.LeftButton)
    assert viewer.zoom == pytest.approx(fit_zoom(pane))


def test_wheel_zooms_around_the_cursor(viewer, qtbot):
    viewer.set_images(gradient(0), gradient(255))
    qtbot.keyClick(viewer, Qt.Key.Key_F)
    (pane,) = viewer.panes()
    fit = viewer.zoom
    cursor = centre(pane) + QPointF(-80, 60)
    before = rgb(grab(viewer), cursor)
    wheel(viewer, cursor, 1)
    assert viewer.zoom == pytest.approx(fit * 1.25)
    assert viewer.pan != QPointF(32, 32)  # the centre moved, the point under the cursor did not
    after = rgb(grab(viewer), cursor)
    assert all(abs(x - y) <= 4 for x, y in zip(before, after, strict=True))
    wheel(viewer, cursor, -2)
    assert viewer.zoom == pytest.approx(fit / 1.25)


def test_drag_pans_both_side_panes_alike(viewer, qtbot):
    viewer.set_images(gradient(0), gradient(255))
    viewer.set_view(4.0, QPointF(32, 32))
    left, right = viewer.panes()
    drag(qtbot, viewer, centre(left), centre(left) - QPointF(42, 26))
    assert viewer.zoom == 4.0
    assert viewer.pan.x() == pytest.approx(42.5) and viewer.pan.y() == pytest.approx(38.5)
    image = grab(viewer)
    r, g, b = rgb(image, centre(left))  # the pan point is at the pane centre: image pixel (42, 38)
    assert abs(r - 42 * 4) <= 4 and abs(g - 38 * 4) <= 4 and b == 0
    for offset in (QPointF(0, 0), QPointF(-90, -100), QPointF(70, -80), QPointF(80, 90)):
        a_pixel, b_pixel = rgb(image, centre(left) + offset), rgb(image, centre(right) + offset)
        assert a_pixel[:2] == b_pixel[:2]  # the same image point in both panes
        assert (a_pixel[2], b_pixel[2]) == (0, 255)  # A's tint left, B's tint right


def test_zoom_and_pan_survive_mode_switches(viewer, qtbot):
    viewer.set_images(gradient(0), gradient(255))
    viewer.set_view(3.0, QPointF(20, 30))
    for key, mode in ((Qt.Key.Key_F, "flip"), (Qt.Key.Key_W, "wipe"), (Qt.Key.Key_S, "side")):
        qtbot.keyClick(viewer, key)
        assert viewer.mode == mode and viewer.zoom == 3.0 and viewer.pan == QPointF(20, 30)
    qtbot.keyClick(viewer, Qt.Key.Key_F)
    r, g, _ = rgb(grab(viewer), centre(viewer.panes()[0]))
    assert abs(r - 20 * 4) <= 4 and abs(g - 30 * 4) <= 4


def test_b_of_another_size_is_drawn_at_a_size(viewer, qtbot):
    viewer.set_images(solid("red"), solid("blue", 32))
    viewer.set_view(1.0, QPointF(32, 32))
    left, right = viewer.panes()
    image = grab(viewer)
    for offset in (QPointF(28, 28), QPointF(-28, -28)):
        assert rgb(image, centre(left) + offset) == RED and rgb(image, centre(right) + offset) == BLUE
    for offset in (QPointF(36, 0), QPointF(0, -36)):
        assert rgb(image, centre(left) + offset) == rgb(image, centre(right) + offset) == BACKGROUND


def test_pixels_are_crisp_zoomed_in_and_averaged_zoomed_out(viewer):
    viewer.set_images(checker(8), checker(8))
    viewer.set_view(8.0, QPointF(4, 4))
    image, c = grab(viewer), centre(viewer.panes()[0])
    row = [rgb(image, c + QPointF(dx, 0))[0] for dx in range(-20, 20)]
    assert set(row) == {0, 255}  # blocks with hard edges, no blend
    viewer.set_images(checker(512), checker(512))  # one-pixel checks at about 0.4x
    image, c = grab(viewer), centre(viewer.panes()[0])
    assert all(90 <= rgb(image, c + QPointF(dx, dx))[0] <= 165 for dx in range(-30, 30, 3))


def test_paths_load_and_unreadable_files_fail(viewer, tmp_path):
    solid("red").save(str(tmp_path / "a.png"))
    solid("blue").save(str(tmp_path / "b.png"))
    viewer.set_images(str(tmp_path / "a.png"), tmp_path / "b.png")
    left, right = viewer.panes()
    image = grab(viewer)
    assert rgb(image, centre(left)) == RED and rgb(image, centre(right)) == BLUE
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read image"):
        viewer.set_images(tmp_path / "junk.png", tmp_path / "b.png")


def test_a_pair_of_the_same_size_keeps_the_view(viewer):
    viewer.set_images(solid("red"), solid("blue"))
    viewer.set_view(2.0, QPointF(10, 12))
    viewer.set_images(solid("green"), solid("yellow"))
    assert viewer.zoom == 2.0 and viewer.pan == QPointF(10, 12)
    viewer.set_images(solid("red", 32), solid("blue", 32))
    assert viewer.pan == QPointF(16, 16) and viewer.zoom == pytest.approx(fit_zoom(viewer.panes()[0], 32))
