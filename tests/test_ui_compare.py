"""The Compare page and the blind vote, driven like the artist drives them."""

import json
import random

import pytest
from helpers_lora import write_demo_lora
from PySide6.QtCore import Qt

from negalora.compare.runner import CompareRequest, run_comparison
from negalora.store import Store

RUN = "20261122-run"
LONG = 120_000


@pytest.fixture(scope="module")
def compared_home(tmp_path_factory, demo_model):
    """A home with a run of three checkpoints and one finished three-way comparison of it."""
    from negalora.generate import Generator
    from negalora.home import Home

    home = Home(tmp_path_factory.mktemp("compared"))
    store = Store(home)
    store.create_run(RUN, None, json.dumps({"steps": 30}), 8)
    for i, step in enumerate((10, 20, 30)):
        path = home.runs / RUN / "checkpoints" / f"step-{step:06d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_demo_lora(demo_model.pipe, path, seed=i)
        store.add_checkpoint(RUN, step, path, "0" * 64)
    request = CompareRequest(prompts=("a red circle", "a cat"), seeds=(1, 2, 3), lora=RUN, steps=2)
    result = run_comparison(Generator(demo_model), store, request)
    store.close()
    return home, result.id


@pytest.fixture
def store(compared_home):
    s = Store(compared_home[0])
    yield s
    s.close()


@pytest.fixture
def page(qtbot, store):
    from negalora.ui.app import make_app
    from negalora.ui.compare_page import ComparePage

    make_app()
    p = ComparePage(store)
    qtbot.addWidget(p)
    p.resize(1200, 800)
    p.show()
    return p


def test_page_opens_on_the_newest_comparison_with_every_cell(page, compared_home):
    _, comparison_id = compared_home
    assert page.comparison["id"] == comparison_id
    assert page.grid.rowCount() == 6 and page.grid.columnCount() == 4
    assert all(not page.grid.item(r, c).icon().isNull() for r in range(6) for c in range(4))
    assert page.grid.horizontalHeaderItem(0).text() == "base"
    assert "seed 3" in page.grid.verticalHeaderItem(2).text()
    # A/B defaults to LoRA + negative against negative only, in the viewer
    assert page.a_column.currentText() == "LoRA 1 on negative pass" and page.b_column.currentText() == "negative: wrong"
    page.grid.setCurrentCell(4, 0)
    cells = page.comparison["cells"]
    assert page.viewer.grab().toImage().width() > 0
    assert cells[(4, 2)][0] != cells[(4, 1)][0]


def test_request_from_the_page(page):
    assert page.source.currentData() == RUN
    assert page.checkpoint.currentData() == 30  # the last, since none is marked best
    page.prompts.setPlainText("a red circle\n\n a cat ")
    page.seeds.setText("1, 5-7")
    page.kind.setCurrentIndex(page.kind.findData("scale_sweep"))
    page.scales.setText("0, 0.5, 1")
    assert page.passes.currentData() == "negative"  # the product's default
    page.passes.setCurrentIndex(page.passes.findData("both"))
    request = CompareRequest.from_dict(page.request())
    assert request.prompts == ("a red circle", "a cat")
    assert request.seeds == (1, 5, 6, 7)
    assert (request.kind, request.scales, request.lora, request.step) == ("scale_sweep", (0.0, 0.5, 1.0), RUN, 30)
    assert request.lora_passes == "both"
    seen = []
    page.render_requested.connect(seen.append)
    page.seeds.setText("1, x")
    page.go.click()
    assert not seen and "seeds" in page.progress_label.text()
    page.seeds.setText("2")
    page.go.click()
    assert CompareRequest.from_dict(seen[0]).seeds == (2,)


def test_mark_best_from_the_page(page, store):
    page.checkpoint.setCurrentIndex(page.checkpoint.findData(20))
    page.mark_best.click()
    assert store.run(RUN)["best_step"] == 20
    assert "best" in page.checkpoint.itemText(page.checkpoint.findData(20))
    page.refresh()
    assert page.checkpoint.currentData() == 20  # the marked one is the page's default now
    store.set_best_step(RUN, None)


def test_prompt_sets_are_saved_and_loaded(page, store):
    page.prompt_set.setEditable(True)
    page.prompt_set.setCurrentText("shapes")
    page.prompts.setPlainText("a red circle\na blue square")
    page.seeds.setText("4, 5")
    page.save_set.click()
    assert store.prompt_set("shapes")["prompts"] == ["a red circle", "a blue square"]
    page.prompts.setPlainText("")
    page._load_set("default")
    assert "a cat sitting" in page.prompts.toPlainText()
    page._load_set("shapes")
    assert page.seeds.text() == "4, 5"


def test_blind_vote_with_the_keyboard(qtbot, store, compared_home):
    from negalora.ui.app import make_app
    from negalora.ui.blind_vote import BlindVoteDialog

    make_app()
    comparison = store.comparison(compared_home[1])
    before = len(store.votes(RUN))
    dialog = BlindVoteDialog(store, comparison, 2, 1, rng=random.Random(7))
    qtbot.addWidget(dialog)
    dialog.show()
    assert len(dialog.pairs) == 6 and dialog.counter.text() == "Pair 1 of 6"
    sides = [p.a_on_left for p in dialog.pairs]
    assert True in sides and False in sides  # random order, both ways
    # always pick the image on the left, then a tie, then right
    keys = [Qt.Key.Key_Left] * 4 + [Qt.Key.Key_Down, Qt.Key.Key_Right]
    for key in keys:
        qtbot.keyClick(dialog, key)
    rows = store.votes(RUN)[before:]
    assert len(rows) == 6 and dialog.finished_all
    expected = ["a" if a_left else "b" for a_left in sides[:4]] + ["tie", "b" if sides[5] else "a"]
    assert [r["outcome"] for r in rows] == expected
    assert [bool(r["a_on_left"]) for r in rows] == sides  # the order shown is stored
    assert {(r["a_label"], r["b_label"], r["step"]) for r in rows} == {
        ("LoRA 1 on negative pass", "negative: wrong", 30)
    }
    assert "beats negative: wrong" in dialog.outcome.text() and "95% CI" in dialog.outcome.text()
    qtbot.keyClick(dialog, Qt.Key.Key_Left)  # nothing left to vote on
    assert len(store.votes(RUN)) == before + 6


@pytest.fixture
def window(qtbot, compared_home):
    from negalora.ui.app import make_app
    from negalora.ui.main_window import MainWindow

    make_app()
    w = MainWindow(compared_home[0], start_worker=True, device="cpu")
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.jobs.state == "idle" and w.model_label.text() == "model: demo", timeout=LONG)
    return w


def test_a_finished_training_run_renders_the_test_set_in_the_worker(window, qtbot, compared_home):
    page = window.compare_page
    page.steps.setValue(2)
    page.store.save_prompt_set("default", ["a red circle"], [1, 2])
    before = page.comparison["id"]
    seen = []
    window.jobs.job_event.connect(seen.append)
    window._train_event({"type": "finished", "job": "t", "status": "done", "run": RUN})
    assert window._compare_job is not None and not page.go.isEnabled()
    qtbot.waitUntil(lambda: window._compare_job is None, timeout=LONG)
    assert page.progress_label.text() == "Done"
    assert page.comparison["id"] != before
    assert page.grid.rowCount() == 2 and page.grid.columnCount() == 4
    assert len(page.comparison["cells"]) == 8
    assert sum(e["type"] == "cell" for e in seen) == 8
    stored = Store(compared_home[0]).comparison(page.comparison["id"])
    assert stored["status"] == "done" and stored["step"] == 30 and stored["run_id"] == RUN


def test_the_generate_page_offers_each_runs_best_checkpoint(qtbot, compared_home, store):
    from negalora.ui.app import make_app
    from negalora.ui.main_window import MainWindow

    make_app()
    store.set_best_step(RUN, 20)
    w = MainWindow(compared_home[0], start_worker=False)
    qtbot.addWidget(w)
    page = w.generate_page
    labels = [page.lora.itemText(i) for i in range(page.lora.count())]
    assert labels == ["None", f"{RUN} · step 20", "Choose a LoRA file…"]
    page.lora.setCurrentIndex(1)
    page.lora_scale.setValue(0.5)
    assert page.lora_passes.currentData() == "negative"  # the product's default
    page.lora_passes.setCurrentIndex(page.lora_passes.findData("both"))
    request = page.build_request()
    assert request.lora.endswith("step-000020.safetensors") and request.lora_scale == 0.5
    assert request.lora_passes == "both"
    state = page.state()
    store.set_best_step(RUN, None)
    w._refresh_loras()
    assert page.lora.itemText(1) == f"{RUN} · step 30"
    page.restore(state)  # a saved LoRA that is no longer a run's pick stays choosable as a file
    assert page.lora.currentData() == state["lora"] and page.lora.currentText().startswith("file: ")
    w.close()


def test_cells_of_another_comparison_do_not_land_in_the_one_on_screen(page):
    shown = page.comparison["id"]
    before = dict(page.comparison["cells"])
    page.set_cell(0, 0, 999, "/nowhere.png", comparison_id=shown + 100)
    assert page.comparison["cells"] == before
