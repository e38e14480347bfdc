"""The main window: a page list on the left, the pages, and a status bar with the device, the
model and the worker's state. Geometry and the last settings are remembered in the home."""

import base64
import os

from PySide6.QtCore import QByteArray, QSize, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QMainWindow, QStackedWidget, QWidget

from negalora.errors import NegaloraError
from negalora.home import Home
from negalora.store import Store
from negalora.ui.ab_viewer import ABDialog
from negalora.ui.blind_vote import BlindVoteDialog
from negalora.ui.compare_page import ComparePage
from negalora.ui.export_page import ExportPage
from negalora.ui.gallery_model import GalleryModel
from negalora.ui.gallery_page import GalleryPage
from negalora.ui.generate_page import GeneratePage
from negalora.ui.jobs import JobController
from negalora.ui.rerender_dialog import RerenderDialog
from negalora.ui.startup import reconcile_message
from negalora.ui.thumbnails import ThumbnailCache
from negalora.ui.train_page import TrainPage
from negalora.ui.viewer import ImageViewer

PAGES = ("generate", "gallery", "train", "compare", "export")


class MainWindow(QMainWindow):
    def __init__(self, home: Home, *, device: str | None = None, model: str | None = None, start_worker=True):
        super().__init__()
        self.home = home
        self.setWindowTitle("negalora")
        self.store = Store(home)
        checked = reconcile_message(self.store)  # files added or removed while the app was closed
        self.thumbs = ThumbnailCache(home.cache / "thumbs", parent=self)
        self.gallery_model = GalleryModel(self.store, self.thumbs, self)
        self.jobs = JobController(home.root, device, self)

        self.generate_page = GeneratePage()
        self.gallery_page = GalleryPage(self.store, self.gallery_model)
        self.train_page = TrainPage(self.store)
        self.compare_page = ComparePage(self.store)
        self.export_page = ExportPage(self.store, self.jobs)
        self.pages = {
            "generate": self.generate_page,
            "gallery": self.gallery_page,
            "train": self.train_page,
            "compare": self.compare_page,
            "export": self.export_page,
        }

        self.nav = QListWidget()
        self.nav.addItems([p.capitalize() for p in PAGES])
        self.nav.setFixedWidth(150)
        self.nav.setStyleSheet(
            "QListWidget { font-size: 15px; padding-top: 8px; border: none; background: #232428; }"
            "QListWidget::item { padding: 10px 14px; }"
            "QListWidget::item:selected { background: #3b4a63; color: white; }"
        )
        self.stack = QStackedWidget()
        for name in PAGES:
            self.stack.addWidget(self.pages[name])
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.nav.currentRowChanged.connect(lambda row: self.train_page.refresh() if PAGES[row] == "train" else None)
        self.nav.currentRowChanged.connect(
            lambda row: self.compare_page.refresh() if PAGES[row] == "compare" and not self._compare_job else None
        )
        self.nav.currentRowChanged.connect(lambda row: self._refresh_loras() if PAGES[row] == "generate" else None)
        central = QWidget()
        row = QHBoxLayout(central)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addWidget(self.nav)
        row.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self.device_label = QLabel("device: –")
        self.model_label = QLabel("model: –")
        self.worker_label = QLabel("worker: stopped")
        for w in (self.device_label, self.model_label, self.worker_label):
            w.setStyleSheet("padding: 0 10px;")
            self.statusBar().addPermanentWidget(w)

        undo = QAction("Undo rating", self)
        undo.setShortcut(QKeySequence.StandardKey.Undo)
        undo.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)  # also in the large view
        undo.triggered.connect(self._undo)
        self.addAction(undo)
        for i, name in enumerate(PAGES):
            act = QAction(name, self)
            act.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            act.triggered.connect(lambda _=False, n=name: self.show_page(n))
            self.addAction(act)

        self.viewer = ImageViewer(self)
        self.viewer.rate.connect(self._rate_from_viewer)
        self.viewer.step.connect(self._step_viewer)
        self.viewer.rerender.connect(lambda: self.open_rerender([self._viewer_id]))
        self.viewer.compare_source.connect(lambda source: self.compare_images(source, self._viewer_id))
        self.viewer.open_source.connect(self.open_image)
        self.ab_dialog: ABDialog | None = None
        self.rerender_dialog: RerenderDialog | None = None
        self._rerender_state: dict = {}
        self.gallery_page.rerender.connect(self.open_rerender)
        self.gallery_page.compare_pair.connect(self.compare_images)
        self.gallery_page.compare_rerenders.connect(self.compare_rerenders)
        self.generate_page.image_path_of = self._image_path
        self.generate_page.use_selected.connect(self._use_selected_as_init)
        self.gallery_page.open_image.connect(self.open_image)
        self.generate_page.open_image.connect(self.open_image)
        self.gallery_page.status.connect(lambda m: self.statusBar().showMessage(m, 5000))
        if checked:
            self.statusBar().showMessage(checked, 30000)
        self.generate_page.generate.connect(self._submit)
        self.generate_page.cancel.connect(self._cancel)
        self.train_page.start.connect(lambda config: self._submit_train(config=config))
        self.train_page.resume.connect(lambda run: self._submit_train(resume=run))
        self.train_page.cancel.connect(lambda: self.jobs.cancel(self._train_job) if self._train_job else None)
        self.compare_page.render_requested.connect(self._submit_compare)
        self.export_page.render_sweep.connect(self._sweep_for_export)
        self.compare_page.cancel.connect(lambda: self.jobs.cancel(self._compare_job) if self._compare_job else None)
        self.compare_page.open_image.connect(self.open_image)
        self.compare_page.blind_vote.connect(self._blind_vote)
        self.jobs.job_event.connect(self._job_event)
        self.jobs.state_changed.connect(lambda s: self.worker_label.setText(f"worker: {s}"))
        self.jobs.message.connect(self._message)
        self.jobs.model_loaded.connect(self._model_loaded)
        self._closed = False
        self._job: str | None = None
        self._train_job: str | None = None
        self._compare_job: str | None = None
        self._job_images = 0
        self.gallery_model.emit_counts()
        for row in reversed(self.store.images(limit=12)):  # the last session's newest images
            if row["generation_id"] is not None:
                self.generate_page.add_result(row["id"], row["path"], row["seed"])

        self._restore(model)
        if start_worker:
            self.jobs.load_model(self.generate_page.model_spec())

    # -- pages ----------------------------------------------------------------------------

    def show_page(self, name: str) -> None:
        self.nav.setCurrentRow(PAGES.index(name))
        if name == "gallery":
            self.gallery_page.view.setFocus()

    def current_page(self) -> str:
        return PAGES[self.stack.currentIndex()]

    def _message(self, text: str) -> None:
        self.statusBar().showMessage(text, 15000)

    # -- jobs -----------------------------------------------------------------------------

    def _submit(self, model: str, requests: list, reject: bool) -> None:
        if self._job is not None:
            self._message("A job is running; cancel it or wait for it to finish")
            return
        self._job = self.jobs.submit_generate(model, requests, reject=reject)
        self._job_images = 0
        self.generate_page.job_started()
        self._save_settings()

    # -- re-render (img2img) --------------------------------------------------------------

    def open_rerender(self, image_ids: list) -> None:
        """The Re-render dialog on these images, prefilled from the last re-render, else with the
        Generate page's LoRA, pass and negative prompt; OK sends one job down the Generate page's path."""
        if not image_ids:
            return
        page = self.generate_page
        defaults = {
            "negative": page.negative.toPlainText().strip() or "wrong",
            "lora": page.lora.currentData() or "",
            "lora_scale": page.lora_scale.value(),
            "lora_passes": page.lora_passes.currentData(),
        }
        parent = self.viewer if self.viewer.isVisible() else self
        if self.rerender_dialog is not None:
            self.rerender_dialog.deleteLater()
        dialog = RerenderDialog(
            self.store,
            list(image_ids),
            page.lora_choices(),
            {**defaults, **self._rerender_state},
            fallback=page.render_settings(),
            parent=parent,
        )
        dialog.submitted.connect(lambda requests: self._submit_rerender(dialog, requests))
        self.rerender_dialog = dialog
        dialog.open()  # window-modal, and the event loop goes on

    def _submit_rerender(self, dialog: RerenderDialog, requests: list) -> None:
        self._rerender_state = dialog.state()
        busy = self._job is not None
        self._submit(self.generate_page.model_spec(), requests, False)  # saves the settings when it starts
        if busy:
            self._save_settings()  # refused: the values are offered again next time
        else:
            n = sum(r.count for r in requests)
            self._message(
                f"Re-rendering {len(requests)} image{'s' if len(requests) != 1 else ''} "
                f"({n} new, strength {requests[0].strength:g}); progress on the Generate page"
            )

    def compare_images(self, a_id: int, b_id: int) -> None:
        """Two stored images side by side in the A/B viewer, labelled by id (and a re-render by its strength)."""
        try:
            rows = self.store.image(a_id), self.store.image(b_id)
        except NegaloraError as exc:
            self._message(str(exc))
            return
        labels = [f"#{a_id}", f"#{b_id}"]
        for i, image_id in enumerate((a_id, b_id)):
            recipe = self.store.recipe(image_id)
            if recipe is not None and recipe.init_image:
                source = self.store.source_of(image_id)
                of = f" of #{source}" if source is not None else ""
                labels[i] += f" · re-render{of}, strength {recipe.strength:g}"
                if source == (a_id, b_id)[1 - i]:
                    labels[1 - i] += " · source"
        if self.ab_dialog is None:
            self.ab_dialog = ABDialog(self)
        self.ab_dialog.show_pair(rows[0]["path"], rows[1]["path"], labels[0], labels[1], f"#{a_id} · #{b_id}")

    def compare_rerenders(self, image_ids: list) -> None:
        """The Compare page with these images as its init images; the artist picks the LoRA and renders."""
        if not image_ids:
            return
        self.show_page("compare")
        self.compare_page.set_init_images(list(image_ids))

    def _image_path(self, image_id: int) -> str | None:
        try:
            return self.store.image(image_id)["path"]
        except NegaloraError:
            return None

    def _use_selected_as_init(self) -> None:
        ids = self.gallery_page.selected_ids()
        if not ids:
            self._message("Select an image in the gallery first")
            return
        self.generate_page.set_init_image(f"#{ids[0]}")

    def _cancel(self) -> None:
        if self._job is not None:
            self.jobs.cancel(self._job)

    def _submit_train(self, config: dict | None = None, resume: str | None = None) -> None:
        if self._train_job is not None:
            self._message("A training run is going on; cancel it first")
            return
        self._train_job = self.jobs.submit_train(self.generate_page.model_spec(), config=config, resume=resume)
        self.train_page.job_started()
        self._save_settings()

    def _train_event(self, msg: dict) -> None:
        kind = msg["type"]
        if kind in ("finished", "failed"):
            self._train_job = None
            self.train_page.job_ended(msg.get("status", "failed"), msg.get("error", ""))
            if msg.get("status") == "done" and msg.get("run"):
                self._compare_after_training(msg["run"])
        else:
            self.train_page.on_event(msg)

    def _submit_compare(self, request: dict) -> None:
        if self._compare_job is not None:
            self._message("A comparison is rendering; cancel it or wait for it to finish")
            return
        self._compare_job = self.jobs.submit_compare(self._base_model_for(request.get("lora", "")), request)
        self.compare_page.job_started()
        self._save_settings()

    def _sweep_for_export(self, request: dict) -> None:
        """The Export page asked for the both-pass strength sweep its card needs: render it where
        comparisons are shown, so the artist can rate its cells there."""
        self._submit_compare(request)
        if self._compare_job is not None:
            self.show_page("compare")

    def _refresh_loras(self) -> None:
        """Each run's best (else last) checkpoint is a LoRA the Generate page can use."""
        loras = []
        for run in self.store.runs():
            kept = self.store.checkpoints(run["id"])
            if kept:
                chosen = next((c for c in kept if c["step"] == run.get("best_step")), kept[-1])
                loras.append((f"{run['id']} · step {chosen['step']}", chosen["path"]))
        self.generate_page.set_loras(loras)

    def _base_model_for(self, lora: str) -> str:
        """A run's LoRA renders on the model the run was trained on; a LoRA file on the chosen model."""
        model = self.store.run_model(lora)
        return model["location"] if model else self.generate_page.model_spec()

    def _compare_after_training(self, run_id: str) -> None:
        """The artist sees the new LoRA's effect without asking: the test set, three ways."""
        self.compare_page.refresh()
        self._refresh_loras()
        request = self.compare_page.request_after_training(run_id)
        if request is not None and self._compare_job is None:
            self._submit_compare(request)
            self._message(f"Training done: rendering the test prompts with {run_id} on the Compare page")

    def _compare_event(self, msg: dict) -> None:
        kind = msg["type"]
        page = self.compare_page
        if kind == "comparison":
            page.begin_grid(msg["comparison"], msg["columns"], msg["rows"])
        elif kind == "cell":
            page.set_cell(msg["row"], msg["col"], msg["image_id"], msg["path"], msg.get("comparison"))
            self.gallery_model.add_new(msg["image_id"])
        elif kind == "progress":
            page.job_progress(msg["image_index"], msg["image_total"], msg["step"], msg["steps"], msg.get("batch", 1))
        elif kind in ("finished", "failed"):
            self._compare_job = None
            page.job_ended(msg.get("status", "failed"), msg.get("comparison"), msg.get("error", ""))

    def _blind_vote(self, spec: dict) -> None:
        comparison = self.store.comparison(spec["comparison"])
        self.vote_dialog = BlindVoteDialog(self.store, comparison, spec["a"], spec["b"], parent=self)
        self.vote_dialog.finished.connect(lambda _: self.compare_page._show_votes())
        self.vote_dialog.show()

    def _job_event(self, msg: dict) -> None:
        kind = msg["type"]
        if self._train_job is not None and msg.get("job") == self._train_job:
            self._train_event(msg)
            return
        if self._compare_job is not None and msg.get("job") == self._compare_job:
            self._compare_event(msg)
            return
        if kind == "image":
            self.gallery_model.add_new(msg["image_id"])
        if msg.get("job") != self._job or self._job is None:
            return
        if kind == "progress":
            self.generate_page.job_progress(
                msg["image_index"], msg["image_total"], msg["step"], msg["steps"], msg.get("batch", 1)
            )
        elif kind == "image":
            self._job_images += 1
            self.generate_page.add_result(msg["image_id"], msg["path"], msg["seed"])
        elif kind == "finished":
            self._job = None
            self.generate_page.job_ended(msg["status"], len(msg["image_ids"]))
        elif kind == "failed":
            self._job = None
            self.generate_page.job_ended("failed", self._job_images, msg["error"])

    def _model_loaded(self, msg: dict) -> None:
        self.device_label.setText(f"device: {msg['device']}")
        self.model_label.setText(f"model: {msg['name']}")

    def _undo(self) -> None:
        self.gallery_page.undo()
        if self.viewer.isVisible():
            self.open_image(self._viewer_id)  # show the verdict it has again

    # -- large view -----------------------------------------------------------------------

    def open_image(self, image_id: int) -> None:
        self._viewer_id = image_id
        recipe = self.store.recipe(image_id)
        source = self.store.source_of(image_id) if recipe is not None and recipe.init_image else None
        self.viewer.show_image(self.store.image(image_id), recipe, source)
        self.viewer.show()
        self.viewer.raise_()

    def _rate_from_viewer(self, verdict: str) -> None:
        self.gallery_page.rate_ids([self._viewer_id], verdict)
        before = self._viewer_id
        self._step_viewer(1)  # auto-advance, as in the grid
        if self._viewer_id == before:
            self.open_image(before)  # the last image: show its new verdict

    def _step_viewer(self, delta: int) -> None:
        idx = self.gallery_model.index_of(self._viewer_id)
        row = idx.row() + delta
        if idx.isValid() and 0 <= row < self.gallery_model.rowCount():
            nxt = self.gallery_model.index(row)
            self.gallery_page.view.setCurrentIndex(nxt)
            self.open_image(self.gallery_model.row_at(row).id)

    # -- settings -------------------------------------------------------------------------

    def _restore(self, model: str | None) -> None:
        settings = self.home.settings()
        ui = settings.get("ui", {})
        self.generate_page.restore(ui.get("generate", {}))
        self.train_page.restore(ui.get("train", {}))
        self.compare_page.restore(ui.get("compare", {}))
        self._rerender_state = dict(ui.get("rerender", {}))
        self._refresh_loras()
        # --model, else the app's last model, else the same defaults as the command line
        chosen = (
            model or ui.get("generate", {}).get("model") or os.environ.get("NEGALORA_MODEL") or settings.get("model")
        )
        if chosen:
            self.generate_page.set_model_spec(chosen)
        if not ui.get("train"):  # no settings of the artist's own yet: the recipe for this model
            self.train_page.apply_default_preset(self.generate_page.model_spec())
        geometry = ui.get("geometry")
        if geometry:
            self.restoreGeometry(QByteArray(base64.b64decode(geometry)))
        else:
            self.resize(QSize(1440, 900))
        self.show_page(ui.get("page", "generate") if ui.get("page") in PAGES else "generate")

    def _save_settings(self) -> None:
        settings = self.home.settings()
        settings["ui"] = {
            "generate": self.generate_page.state(),
            "train": self.train_page.state(),
            "compare": self.compare_page.state(),
            "rerender": self._rerender_state,
            "geometry": base64.b64encode(self.saveGeometry().data()).decode(),
            "page": self.current_page(),
        }
        self.home.save_settings(settings)

    def closeEvent(self, event) -> None:
        if self._closed:  # closed before (a second close() from the app's shutdown): nothing left to do
            super().closeEvent(event)
            return
        self._closed = True
        self._save_settings()
        self.jobs.job_event.disconnect(self._job_event)  # events still in flight must not reach a closed store
        self.jobs.shutdown()
        self.thumbs.wait_idle(2000)
        self.store.close()
        super().closeEvent(event)
