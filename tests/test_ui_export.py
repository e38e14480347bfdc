"""The Export page with a real worker: the metadata preview, the best step marked, Export, the result."""

import json
from pathlib import Path

from helpers_export import seed_rejects, train
from PySide6.QtCore import Qt
from safetensors import safe_open

from negalora.store import Store

LONG = 120_000  # ms: the worker imports torch and diffusers, then loads the model


def test_export_page_previews_the_metadata_and_exports_through_the_worker(qtbot, home, demo_model):
    from negalora.ui.app import make_app
    from negalora.ui.main_window import MainWindow

    store = seed_rejects(home, 4)
    run_id = train(home, store, demo_model)
    store.set_best_step(run_id, 2)
    store.close()
    make_app()
    window = MainWindow(home, start_worker=True, device="cpu")
    qtbot.addWidget(window)
    window.show()
    window.show_page("export")
    page = window.export_page
    assert page.runs.currentData() == run_id
    assert [page.steps.itemText(i) for i in range(page.steps.count())] == ["step 4", "step 2  ★ best"]
    assert page.steps.currentData() == 2  # the best step is the default
    page.format.setCurrentIndex(page.format.findData("kohya"))
    page.name.setText("my-wrong")
    qtbot.waitUntil(lambda: "ss_output_name: my-wrong" in page.metadata.toPlainText(), timeout=20_000)
    preview = page.metadata.toPlainText()
    assert "ss_network_dim: 4" in preview and "modelspec.trigger_phrase: wrong" in preview
    assert page.dest.text().startswith(str(home.exports / "my-wrong.safetensors"))
    qtbot.waitUntil(lambda: window.jobs.state == "idle" and window.model_label.text() == "model: demo", timeout=LONG)
    seen = []
    window.jobs.job_event.connect(seen.append)
    qtbot.mouseClick(page.export_button, Qt.MouseButton.LeftButton)
    assert not page.export_button.isEnabled()
    qtbot.waitUntil(lambda: any(e["type"] in ("finished", "failed") for e in seen), timeout=LONG)
    end = [e for e in seen if e["type"] in ("finished", "failed")][-1]
    assert end["type"] == "finished" and end["status"] == "done", end
    assert any(e["type"] == "export_stage" and e["stage"] == "verifying" for e in seen)
    path = home.exports / "my-wrong.safetensors"
    assert end["export"]["path"] == str(path) and end["export"]["step"] == 2
    text = page.result.toPlainText()
    assert str(path) in text and end["export"]["sha256"] in text and "Verified by reloading it" in text
    assert page.status.text() == "Exported my-wrong.safetensors." and page.export_button.isEnabled()
    assert page.history.count() == 1
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata()["ss_output_name"] == "my-wrong"
    assert Path(end["export"]["model_card"]).is_file()
    # every file written is listed, and the ComfyUI workflow is one click from the clipboard
    for f in end["export"]["files"]:
        assert f in text and Path(f).is_file()
    workflow = Path(end["export"]["comfyui_workflow"])
    assert workflow.name == "my-wrong.comfyui.json"
    assert page.copy_button.isEnabled()
    qtbot.mouseClick(page.copy_button, Qt.MouseButton.LeftButton)
    from PySide6.QtGui import QGuiApplication

    assert json.loads(QGuiApplication.clipboard().text()) == json.loads(workflow.read_text(encoding="utf-8"))
    # no strength sweep yet: the page offers one, rendered on the Compare page
    assert "demo world" in page.evidence.text() and page.sweep_button.isVisible()
    seen.clear()
    qtbot.mouseClick(page.sweep_button, Qt.MouseButton.LeftButton)
    assert window.stack.currentWidget() is window.compare_page
    qtbot.waitUntil(lambda: any(e["type"] in ("finished", "failed") for e in seen), timeout=LONG)
    assert [e for e in seen if e["type"] in ("finished", "failed")][-1]["status"] == "done"
    store = Store(home)
    (sweep,) = [c for c in store.comparisons(run_id) if c["kind"] == "scale_sweep"]
    assert [c["lora_passes"] for c in sweep["columns"]] == ["both"] * 5 and sweep["step"] == 2
    assert sweep["config"]["prompt_set"] == "default-demo" and sweep["config"]["guidance"] == 3.0
    window.show_page("export")
    qtbot.waitUntil(lambda: not page.sweep_button.isVisible(), timeout=20_000)  # the sweep is there now
    assert [e["path"] for e in store.exports(run_id)] == [str(path)]
    store.close()
