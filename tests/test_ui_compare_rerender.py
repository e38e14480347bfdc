"""The Compare page on re-renders: init images (gallery ids) as the rows instead of test prompts,
their strength, the checks before a request is sent, and the gallery's menu that fills them in."""

import pytest
from helpers_ui import seed_home

from negalora.api import DEFAULT_STRENGTH, THREE_WAY, CompareRequest
from negalora.compare.columns import three_way
from negalora.store import Store


@pytest.fixture
def seeded(home):
    return seed_home(home, 4)  # ids 1-4: red, green, blue, yellow circles


@pytest.fixture
def store(home, seeded):
    s = Store(home)
    yield s
    s.close()


@pytest.fixture
def page(qtbot, store, tmp_path):
    from negalora.ui.app import make_app
    from negalora.ui.compare_page import FILE_SOURCE, ComparePage

    make_app()
    p = ComparePage(store)
    qtbot.addWidget(p)
    p.resize(1200, 800)
    p.show()
    assert p.source.currentData() == FILE_SOURCE  # no training runs in this home
    p.lora_file.setText(str(tmp_path / "wrong.safetensors"))  # the page sends the path; the worker checks it
    return p


def _sent(page) -> list[dict]:
    seen: list[dict] = []
    page.render_requested.connect(seen.append)
    return seen


def test_the_request_carries_the_init_images_and_their_strength(page, seeded):
    assert not page.strength.isEnabled()  # nothing to re-render yet
    prompts_before = page.prompts.toPlainText()
    assert len(prompts_before.splitlines()) > 1  # the default test set
    request = CompareRequest.from_dict(page.request())
    assert request.init_images == () and request.strength == DEFAULT_STRENGTH
    assert request.prompts == tuple(prompts_before.splitlines())  # the prompt path as before

    page.init_images.setText(f"#{seeded[2]} #{seeded[0]}, {seeded[2]}")
    assert page.strength.isEnabled()
    assert page.prompts.toPlainText() == ""  # the test set is set aside: each image keeps its own prompt
    page.strength.setValue(0.35)
    page.seeds.setText("3-4")
    request = CompareRequest.from_dict(page.request())
    assert request.init_images == (str(seeded[2]), str(seeded[0]))  # in the order given, each once
    assert request.strength == pytest.approx(0.35)
    assert (request.prompts, request.seeds) == ((), (3, 4))

    page.prompts.setPlainText("a square instead")  # one prompt: for every image
    assert CompareRequest.from_dict(page.request()).prompts == ("a square instead",)

    page.prompts.clear()
    page.init_images.clear()  # back to prompts: the test set returns, the strength is off
    assert page.prompts.toPlainText() == prompts_before and not page.strength.isEnabled()
    request = CompareRequest.from_dict(page.request())
    assert request.init_images == () and request.strength == DEFAULT_STRENGTH


def test_an_empty_prompt_box_is_accepted_with_init_images_and_refused_without(page, seeded):
    sent = _sent(page)
    page.prompts.clear()
    page.go.click()
    assert not sent and "prompt" in page.progress_label.text()
    page.init_images.setText(str(seeded[1]))
    page.go.click()
    [request] = sent
    assert CompareRequest.from_dict(request).init_images == (str(seeded[1]),)
    assert CompareRequest.from_dict(request).prompts == ()


def test_bad_init_images_are_refused_with_a_message_and_no_request(page, seeded):
    sent = _sent(page)
    page.init_images.setText(f"{seeded[0]}, twelve")
    page.go.click()
    assert not sent and "'twelve'" in page.progress_label.text() and "gallery id" in page.progress_label.text()
    page.init_images.setText(f"{seeded[0]} #999")
    page.go.click()
    assert not sent and "#999" in page.progress_label.text()
    page.init_images.setText(str(seeded[0]))
    page.prompts.setPlainText("one prompt\nand another")  # more than one: which would each image take?
    page.go.click()
    assert not sent and "one prompt for every image" in page.progress_label.text()
    page.prompts.clear()
    page.steps.setValue(1)
    page.strength.setValue(0.5)  # int(1 x 0.5) = 0 steps re-run
    page.go.click()
    assert not sent and "re-runs no step" in page.progress_label.text()
    page.steps.setValue(4)
    page.go.click()
    assert len(sent) == 1


def test_the_strength_is_kept_with_the_page_settings(page, qtbot, store):
    from negalora.ui.compare_page import ComparePage

    page.strength.setValue(0.75)
    page.init_images.setText("1")
    state = page.state()
    assert state["strength"] == pytest.approx(0.75)
    assert len(state["prompts"].splitlines()) > 1  # the set-aside test prompts, not the empty box
    other = ComparePage(store)
    qtbot.addWidget(other)
    other.restore(state)
    assert other.strength.value() == pytest.approx(0.75)
    assert other.init_images.text() == ""  # a selection is not kept across sessions


def test_a_stored_rerender_comparison_shows_a_row_per_image_and_seed(page, store, seeded):
    columns = [c.to_dict() for c in three_way("wrong.safetensors", 1.0, "wrong", "negative", True)]
    config = CompareRequest(
        prompts=("one prompt",), seeds=(1, 2), init_images=(str(seeded[0]), str(seeded[3]))
    ).to_dict()
    comparison_id = store.create_comparison(THREE_WAY, columns, config, lora_path="wrong.safetensors")
    for row in range(4):
        for col in range(len(columns)):
            store.add_comparison_cell(comparison_id, row, col, seeded[(row + col) % 4])
    page.show_comparison(comparison_id)
    assert page.grid.rowCount() == 4 and page.grid.columnCount() == len(columns)
    headers = [page.grid.verticalHeaderItem(r).text() for r in range(4)]
    assert headers[0].startswith(f"#{seeded[0]} re-rendered") and headers[0].endswith("seed 1")
    assert headers[3].startswith(f"#{seeded[3]} re-rendered") and headers[3].endswith("seed 2")
    assert all(not page.grid.item(r, c).icon().isNull() for r in range(4) for c in range(len(columns)))


def test_the_gallerys_menu_fills_the_compare_page_and_shows_it(qtbot, home, seeded, monkeypatch):
    from negalora.ui.app import make_app
    from negalora.ui.main_window import MainWindow

    make_app()
    w = MainWindow(home, start_worker=False)
    qtbot.addWidget(w)
    w.show()
    w.show_page("gallery")
    sent = []
    monkeypatch.setattr(w.jobs, "start", lambda: None)
    monkeypatch.setattr(w.jobs.client, "submit", lambda model, request: sent.append(request) or "j9")
    view, model = w.gallery_page.view, w.gallery_model
    view.setCurrentIndex(model.index_of(seeded[1]))
    view.selectionModel().select(model.index_of(seeded[3]), view.selectionModel().SelectionFlag.Select)
    w.compare_page.kind.setCurrentIndex(w.compare_page.kind.findData("scale_sweep"))

    actions = {a.text(): a for a in w.gallery_page.context_menu().actions() if a.text()}
    action = actions["Compare re-renders of these… (base / wrong / LoRA)"]
    assert action.isEnabled()
    action.trigger()
    page = w.compare_page
    assert w.current_page() == "compare" and page.isVisible()
    assert set(page.init_images.text().replace(",", " ").split()) == {f"#{seeded[1]}", f"#{seeded[3]}"}
    assert page.kind.currentData() == THREE_WAY and page.strength.isEnabled()
    assert not sent and w._compare_job is None  # the artist picks the LoRA, then renders
    assert "choose the LoRA" in page.progress_label.text()

    page.lora_file.setText("wrong.safetensors")
    page.go.click()
    [request] = sent  # the worker's request, as the window sends it
    assert isinstance(request, CompareRequest) and request.kind == THREE_WAY
    assert sorted(request.init_images) == sorted([str(seeded[1]), str(seeded[3])])


def test_a_rendered_rerender_comparison_on_the_page(page, store, seeded, tmp_path):
    """The engine's comparison of two re-renders, shown as the page shows a stored one: a row per
    image and seed, each with the image's own prompt and its id."""
    from helpers_lora import write_demo_lora

    from negalora.compare.runner import run_comparison
    from negalora.device import choose_placement
    from negalora.generate import Generator
    from negalora.home import Home
    from negalora.models.loader import load_model

    # a model of its own: the session's demo pipeline may hold another test's LoRA
    demo_model = load_model("demo", Home(tmp_path / "model-home"), choose_placement("cpu"))
    lora = tmp_path / "wrong.safetensors"
    write_demo_lora(demo_model.pipe, lora)
    page.lora_file.setText(str(lora))
    page.init_images.setText(f"#{seeded[0]}, #{seeded[2]}")
    page.seeds.setText("1, 2")
    page.steps.setValue(2)
    # both passes, no negative-only column: a LoRA on the negative pass of an img2img reads the txt2img
    # pipeline's guidance (unset in a process that has not rendered from noise yet), an engine matter
    page.passes.setCurrentIndex(page.passes.findData("both"))
    page.extra_column.setChecked(False)
    request = CompareRequest.from_dict(page.request())
    result = run_comparison(Generator(demo_model), store, request)
    assert result.status == "done"
    page.show_comparison(result.id)
    assert page.grid.rowCount() == 4 and page.grid.columnCount() == 3
    headers = [page.grid.verticalHeaderItem(r).text().splitlines() for r in range(4)]
    assert [h[0] for h in headers] == [f"#{seeded[0]} re-rendered"] * 2 + [f"#{seeded[2]} re-rendered"] * 2
    assert [h[1] for h in headers] == ["a red circle 0"] * 2 + ["a blue circle 2"] * 2  # each image's own
    assert [h[2] for h in headers] == ["seed 1", "seed 2"] * 2
    assert all(not page.grid.item(r, c).icon().isNull() for r in range(4) for c in range(3))
