"""The window with its worker process: generation, Cancel, and a worker killed mid-job."""

import os
import time

import pytest
from helpers_ui import seed_home
from PySide6.QtCore import Qt

from negalora.generate import GenerateRequest
from negalora.store import Store

LONG = 120_000  # ms: the worker imports torch and diffusers, then loads the model


def _open_window(qtbot, home):
    from negalora.ui.app import make_app
    from negalora.ui.main_window import MainWindow

    make_app()
    seed_home(home, 3)
    w = MainWindow(home, start_worker=True, device="cpu")
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.jobs.state == "idle" and w.model_label.text() == "model: demo", timeout=LONG)
    return w


@pytest.fixture
def window(qtbot, home):
    return _open_window(qtbot, home)


def _events(window):
    seen = []
    window.jobs.job_event.connect(seen.append)
    return seen


def test_generation_through_the_window_adds_images(window, home, qtbot):
    page = window.generate_page
    page.prompts.setPlainText("a red circle\na blue square")
    page.count.setValue(2)
    page.steps.setValue(4)
    page.seed.setText("77")
    page.seed_lock.setChecked(True)
    seen = _events(window)
    qtbot.mouseClick(page.go, Qt.MouseButton.LeftButton)
    assert not page.go.isEnabled() and page.stop.isEnabled()
    qtbot.waitUntil(lambda: any(e["type"] == "finished" and e["job"] != "j1" for e in seen), timeout=LONG)
    assert window.gallery_model.rowCount() == 3 + 4
    assert page.results.count() == 3 + 4  # the last session's images, then the new ones on top
    assert [page.results.item(i).text().split("seed ")[1] for i in range(4)] == ["80", "79", "78", "77"]
    assert page.progress_label.text() == "Done: 4 images"
    assert page.go.isEnabled()
    seeds = sorted(e["seed"] for e in seen if e["type"] == "image")
    assert seeds == [77, 78, 79, 80]
    assert any(e["type"] == "progress" and e["step"] == 4 for e in seen)
    # Woolf's recipe as one action: the set arrives already rejected
    page.wrong_count.setValue(2)
    page.steps.setValue(2)
    qtbot.mouseClick(page.wrong_go, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: sum(e["type"] == "finished" for e in seen) == 2, timeout=LONG)
    store = Store(home)
    assert store.counts()["all"] == 9
    rejects = store.images("reject")
    assert len(rejects) == 2 and all("++++" in r["prompt"] for r in rejects)
    assert window.gallery_page.buttons["reject"].text() == "Rejected (2)"
    store.close()


def test_cancel_stops_within_a_step_and_keeps_no_partial_image(window, home, qtbot):
    page = window.generate_page
    page.count.setValue(1)
    page.steps.setValue(400)  # long enough to cancel in the middle
    seen = _events(window)
    qtbot.mouseClick(page.go, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: any(e["type"] == "progress" and e["step"] >= 3 for e in seen), timeout=LONG)
    cancelled_at = time.monotonic()
    qtbot.mouseClick(page.stop, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: any(e["type"] == "finished" for e in seen if e.get("job") != "j1"), timeout=30000)
    finished = [e for e in seen if e["type"] == "finished"][-1]
    assert finished["status"] == "cancelled" and finished["image_ids"] == []
    assert time.monotonic() - cancelled_at < 5
    assert max(e["step"] for e in seen if e["type"] == "progress") < 400
    assert page.progress_label.text() == "Cancelled; 0 kept"
    store = Store(home)
    assert store.counts()["all"] == 3  # only the seeded images
    assert len(list(home.images.rglob("*.png"))) == 3
    store.close()


def test_killed_worker_leaves_the_window_and_ratings_and_queued_jobs(window, home, qtbot):
    gallery = window.gallery_page
    window.show_page("gallery")
    qtbot.keyClick(gallery.view, Qt.Key.Key_X)
    qtbot.keyClick(gallery.view, Qt.Key.Key_P)
    first_pid = window.jobs.client.pid
    seen = _events(window)
    long_job = window.jobs.submit_generate("demo", [GenerateRequest(prompts=("a",), steps=1000, seed=1)])
    queued = window.jobs.submit_generate("demo", [GenerateRequest(prompts=("b",), steps=3, seed=2)])
    qtbot.waitUntil(lambda: any(e["type"] == "progress" and e["job"] == long_job for e in seen), timeout=LONG)
    window.jobs.client.kill()
    qtbot.waitUntil(lambda: any(e["type"] == "exited" for e in seen), timeout=30000)
    assert window.isVisible()
    assert "stopped unexpectedly" in window.statusBar().currentMessage()
    failed = [e for e in seen if e["type"] == "failed"]
    assert failed and failed[0]["job"] == long_job
    # the new worker runs the job that was queued behind the one that died
    qtbot.waitUntil(lambda: any(e["type"] == "finished" and e["job"] == queued for e in seen), timeout=LONG)
    assert window.jobs.client.pid != first_pid and window.jobs.client.alive
    assert window.jobs.restarts == 1
    store = Store(home)
    verdicts = sorted(r["verdict"] or "-" for r in store.images())
    assert verdicts == ["-", "-", "pick", "reject"]  # 3 seeded + 1 new; both ratings kept
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()
    assert os.path.exists(home.db_path)


def test_out_of_memory_in_the_worker_fails_that_job_only(qtbot, home, monkeypatch):
    monkeypatch.setenv("NEGALORA_FAULTS", "generate_step=oom@1")  # the worker's first denoising step
    window = _open_window(qtbot, home)
    pid = window.jobs.client.pid
    seen = _events(window)
    window.show_page("generate")
    page = window.generate_page
    page.prompts.setPlainText("a red circle")
    page.steps.setValue(3)
    qtbot.mouseClick(page.go, Qt.MouseButton.LeftButton)
    queued = window.jobs.submit_generate("demo", [GenerateRequest(prompts=("b",), steps=3, seed=2)])
    qtbot.waitUntil(lambda: any(e["type"] == "finished" and e["job"] == queued for e in seen), timeout=LONG)
    [failed] = [e for e in seen if e["type"] == "failed"]
    assert failed["kind"] == "out_of_memory" and failed["error"].startswith("out of memory: lower the batch")
    assert window.isVisible() and page.go.isEnabled()
    assert page.progress_label.text() == "Failed" and "out of memory" in page.error.text()
    assert window.jobs.client.pid == pid and window.jobs.restarts == 0  # the same worker went on
    store = Store(home)
    assert store.counts()["all"] == 3 + 1  # the queued job's image; nothing from the failed one
    store.close()


def test_training_from_the_train_page_shows_losses_and_validation_images(window, home, qtbot):
    store = Store(home)
    seeded = [r["id"] for r in store.images()]
    store.rate(seeded, "reject")
    store.close()
    window.show_page("train")
    page = window.train_page
    assert "<b>3</b> rejected images" in page.dataset_label.text()
    page.preset.setCurrentIndex(list(page.preset.itemData(i) for i in range(page.preset.count())).index("cpu-demo"))
    page.steps.setValue(6)
    page.batch.setValue(2)
    page.checkpoint_every.setValue(3)
    seen = _events(window)
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    assert not page.start_button.isEnabled() and page.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: any(e["type"] in ("finished", "failed") and e.get("run") for e in seen), timeout=LONG)
    end = [e for e in seen if e["type"] in ("finished", "failed")][-1]
    assert end["type"] == "finished" and end["status"] == "done", end
    assert page._steps == [1, 2, 3, 4, 5, 6]
    validations = [e for e in seen if e["type"] == "validation"]
    assert [v["step"] for v in validations] == [3, 6] and all(len(v["paths"]) == 2 for v in validations)
    assert page.samples.count() == 2  # when the run ends, the page shows its newest validation images
    assert page.samples.item(0).text() == "step 6"
    assert page.status.text() == "Finished."
    assert page.runs.count() == 1 and page.runs.itemData(0) == end["run"]
    assert "warning" in page.refused.toPlainText()  # 3 images: fewer than a LoRA needs
