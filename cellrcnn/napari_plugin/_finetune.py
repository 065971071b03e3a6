"""The Fine-tune widget: cellrcnn.fit on napari layers or a folder, with a live loss and Dice plot."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton, SpinBox
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from superqt.utils import ensure_main_thread

from cellrcnn import (Config, DataConfig, ModelConfig, TrainConfig, adaptation_overrides, fit, load_checkpoint,
                      model_config_from_run)

from ..config.train import ADAPT_RECIPE
from ..engine.hooks import Callback, Cancel, Cancelled, HookBase
from ..io.folders import write_pair
from ..viz.plots import plot_history
from ._common import fail, follow_layers, given

__all__ = ["FinetuneWidget"]

logger = logging.getLogger(__name__)


#: The settings this widget shows, by the names library messages give them.
LABELS = {"train.steps": "Steps (adapting)", "train.epochs": "Epochs", "model.part_weights": "Cytoplasm weight",
          "train.device": "Device", "model.weights": "Starting model"}


class FinetuneWidget(Container):
    """Fine-tune a model on an image layer with its part labels, or on a folder of images and masks.

    The run folder is what ``cellrcnn-finetune`` writes (``best.pt``,
    ``last.pt``, ``history.csv``...). Cancel stops at the next batch; ``last.pt``
    then holds the last complete epoch, and ``cellrcnn-finetune --resume``
    continues it.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.image = ComboBox(label="Image layer", choices=self._layers("image"), nullable=True)
        self.labels = ComboBox(label="Part labels layer", choices=self._layers("labels"), nullable=True,
                               tooltip="0 background, 1 cytoplasm, 2 nucleus (a corrected 'parts' layer)")
        self.folder = FileEdit(label="or a data folder", mode="d",
                               tooltip="images with <name>_masks files, as cellrcnn-finetune reads; "
                                       "used instead of the layers when given")
        self.start = FileEdit(label="Starting model", mode="r", filter="*.pt",
                              tooltip="best.pt of a run to adapt; empty: COCO-pretrained weights (downloaded)")
        self.steps = SpinBox(label="Steps (adapting)", value=ADAPT_RECIPE["train.steps"], min=0, max=100000,
                             tooltip="with a starting model: optimizer steps of the adaptation recipe (cosine lr "
                                     "from 0.01, flips, turns, stain and scale jitter, cells resized to the "
                                     "model's cell size), as cellrcnn-finetune --from; 0: train for Epochs")
        self.epochs = SpinBox(label="Epochs", value=20, min=1, max=1000,
                              tooltip="passes over the images: from COCO weights (lr 0.001 halved every 5 epochs), "
                                      "or from a starting model with Steps 0")
        self.cytoplasm_weight = FloatSpinBox(label="Cytoplasm weight", value=1.0, min=0.1, max=10.0, step=0.1,
                                             tooltip="weight of the cytoplasm class in the part loss (>1: its "
                                                     "errors cost more)")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto")
        self.out = FileEdit(label="Run folder", mode="d", tooltip="a new folder for this run")
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Epochs done", value=0, min=0, max=1)
        self.status = Label(value="")
        self.figure = Figure(figsize=(6, 2.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.extend([self.image, self.labels, self.folder, self.start, self.steps, self.epochs,
                     self.cytoplasm_weight,
                     self.device, self.out, self.train_button, self.cancel_button, self.progress, self.status])
        self.native.layout().addWidget(self.canvas)
        self.history = pd.DataFrame()
        self.worker = None
        self._cancel: Cancel | None = None
        self.train_button.changed.connect(self.train)
        self.cancel_button.changed.connect(self.cancel)
        follow_layers(self, napari_viewer, self._refresh, self._stop)
        self.reset_choices()

    def _refresh(self, _event=None) -> None:
        self.reset_choices()

    def _layers(self, kind: str):
        return lambda _widget=None: [(layer.name, layer) for layer in self.viewer.layers if layer._type_string == kind]

    def _fail(self, message: str) -> None:
        fail(self.status, message, LABELS)

    def config(self) -> Config:
        """The run's config from the widget's settings.

        A starting run passes on its model and how it reads images (channels,
        projection, percentiles) and, unless Steps is 0, trains with the
        adaptation recipe, as ``cellrcnn-finetune --from`` does
        (:func:`cellrcnn.adaptation_overrides`). Without one, the COCO
        fine-tuning protocol runs for Epochs. Masks are part labels 0, 1, 2...;
        on layers (one image) nothing is held out for validation.
        """
        weights = {"cytoplasm": self.cytoplasm_weight.value}
        val_fraction = DataConfig().val_fraction if given(self.folder) else 0.0
        start = given(self.start)
        if not start:
            model = ModelConfig(part_weights=weights)
            return Config(model=model, data=DataConfig(part_values=tuple(range(len(model.parts))),
                                                       val_fraction=val_fraction),
                          train=TrainConfig(epochs=self.epochs.value, device=self.device.value, workers=0))
        model = model_config_from_run(start)
        read = Config.from_saved(load_checkpoint(model.weights)["config"]).data
        settings = {"model.part_weights": weights, "data.part_values": tuple(range(len(model.parts))),
                    "data.val_fraction": val_fraction, "data.channels": read.channels,
                    "data.projection": read.projection, "data.percentiles": read.percentiles,
                    "train.device": self.device.value, "train.workers": 0}
        if self.steps.value:
            settings["train.steps"] = self.steps.value
        else:
            settings["train.epochs"] = self.epochs.value
        return Config.from_overrides(adaptation_overrides(start, settings) | settings)

    def train(self) -> None:
        """Run :func:`cellrcnn.fit` in a thread worker."""
        out, folder = given(self.out), given(self.folder)
        if out is None:
            return self._fail("choose a run folder for the results")
        if out.exists() and any(out.iterdir()):
            return self._fail(f"{out} is not empty; choose a new folder for this run" +
                              (" (resume the run there with cellrcnn-finetune --resume)"
                               if (out / "last.pt").exists() else ""))
        try:
            config = self.config()
            if folder is None:
                image, labels = self.image.value, self.labels.value
                if image is None or labels is None:
                    return self._fail("choose an image layer and its part labels layer, or a data folder")
                parts = np.asarray(labels.data)
                if parts.size and parts.max() >= len(config.model.parts):
                    return self._fail(f"layer {labels.name!r} holds labels up to {parts.max()}, not part labels "
                                      f"({', '.join(f'{k} {p}' for k, p in enumerate(config.model.parts))}); "
                                      f"choose the parts layer")
                write_pair(out / "training_data", image.name, np.asarray(image.data), parts)
                folder = out / "training_data"
        except (ValueError, FileNotFoundError) as err:  # DataError is a ValueError
            return self._fail(str(err))
        self._cancel = Cancel()
        self.history = pd.DataFrame()
        # a step count becomes epochs once the images are counted (_set_epochs); until then the bar is busy
        self.progress.max, self.progress.value = (0 if config.train.steps else config.train.epochs), 0
        # errors go to _errored (one line in the widget), not re-raised in Qt's event loop
        hooks = [_Epochs(self._set_epochs), Callback(self._epoch_done), self._cancel]
        self.worker = create_worker(fit, config, folder, out, hooks=hooks,
                                    quiet=True, _connect={"errored": self._errored}, _start_thread=False)
        self.worker.returned.connect(lambda history: self._finished(out, history))
        self.worker.finished.connect(self._idle)
        self.train_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"training into {out}..." + (" (one image: losses only, no validation Dice)"
                                                         if given(self.folder) is None else "")
        self.worker.start()

    def _stop(self) -> None:
        """On close: stop training, updating no widget (they may be gone already)."""
        cancel = getattr(self, "_cancel", None)
        if cancel is not None:
            cancel.cancel()

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
            self.status.value = "cancelling at the next batch..."

    @ensure_main_thread
    def _set_epochs(self, epochs: int) -> None:
        self.progress.max = epochs

    @ensure_main_thread
    def _epoch_done(self, row: dict, history: pd.DataFrame) -> None:
        self.history = history
        self.progress.value = int(row["epoch"])
        plot_history(history, self.figure.axes if len(self.figure.axes) == 2 else self.figure.subplots(1, 2))
        self.canvas.draw_idle()

    def _finished(self, out: Path, history: pd.DataFrame) -> None:
        self.status.value = f"done: {len(history)} epochs; the model is {out / 'best.pt'}"
        show_info(self.status.value)

    def _errored(self, err: Exception) -> None:
        if isinstance(err, Cancelled):
            self.status.value = str(err)
        else:
            self._fail(f"training failed: {err}")

    def _idle(self) -> None:
        self.train_button.enabled, self.cancel_button.enabled = True, False


class _Epochs(HookBase):
    """Tells ``function`` the run's epoch count once training starts: a step count becomes epochs only then."""

    def __init__(self, function) -> None:
        self.function = function

    def before_train(self, trainer) -> None:
        self.function(trainer.config.train.epochs)
