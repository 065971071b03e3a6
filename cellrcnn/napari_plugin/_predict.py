"""The Predict widget: a trained model applied to an image layer, giving cell and part Labels layers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton,
                              SpinBox, Table)
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info

from cellrcnn import Predictor

from ..export.files import export_prediction, output_paths, write_table
from ..utils.files import safe_stem
from ..viz.style import part_colour
from ._common import fail, follow_layers, given

__all__ = ["PredictWidget"]

logger = logging.getLogger(__name__)

#: The Cells choice as :meth:`Predictor.predict`'s ``largest``: None follows the model's ``single_cell``.
CELL_CHOICES = {"as the model was trained": None, "all": False, "largest complete cell only": True}
#: The settings this widget shows, by the names library messages give them.
LABELS = {"score_threshold": "Score threshold", "largest": "Cells", "tile": "Tile (px)",
          "pixel_size": "Pixel size (µm)", "overwrite": "Replace existing files"}


def _predict(model: Path, loaded: dict, image: np.ndarray, name: str, options: dict):
    """Worker body: load the model once per file, then yield progress and return the prediction."""
    key = (str(model), model.stat().st_mtime if model.exists() else None)
    if loaded.get("key") != key:
        loaded.update(key=key, predictor=Predictor.from_checkpoint(model))
    prediction = yield from loaded["predictor"].predict_steps(image, name=name, **options)
    return loaded["predictor"], prediction


def part_colormap(parts: tuple[str, ...]) -> DirectLabelColormap:
    """Part labels in the colours of the exported overlays; background transparent."""
    colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    colours.update({k: (*part_colour(name, k, 1.0), 1.0) for k, name in enumerate(parts) if k})
    return DirectLabelColormap(color_dict=colours)


class PredictWidget(Container):
    """Predict cells and parts in an image layer with a cellrcnn model.

    Adds ``<image> cells`` (one label per cell, the per-cell table as its
    features, also shown below) and ``<image> parts`` (background, cytoplasm,
    nucleus in the overlay colours), and saves them as ``cellrcnn-predict``
    does.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.model_path = FileEdit(label="Model", mode="r", filter="*.pt *.zip",
                                   tooltip="best.pt of a run, a run folder (type its path), or a bioimage.io "
                                           "package exported by cellrcnn (.zip)")
        self.image = ComboBox(label="Image", choices=self._image_layers, nullable=True)
        self.score_threshold = FloatSpinBox(label="Score threshold", value=0.5, min=0.0, max=0.99, step=0.05,
                                            tooltip="the model's own (a package records one; a run: 0.5) until "
                                                    "you change it; shown after each prediction")
        self.cells = ComboBox(label="Cells", choices=list(CELL_CHOICES), value="as the model was trained",
                              tooltip="every cell found, or only the largest complete one (for crops of one "
                                      "cell); 'as the model was trained' follows its single-cell setting")
        self.tile = SpinBox(label="Tile (px)", value=0, min=0, max=100_000, step=64,
                            tooltip="0: automatic (1024 network pixels); images larger than one tile are "
                                    "predicted in overlapping tiles")
        self.pixel_size = FloatSpinBox(label="Pixel size (µm)", value=0.0, min=0.0, max=1000.0, step=0.0001,
                                       tooltip="0: none (areas in pixels only); taken from the layer's scale "
                                               "when it has one")
        self.run_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=1)
        self.status = Label(value="")
        self.table = Table(label="Cells")
        self.out_dir = FileEdit(label="Save to", mode="d")
        self.overwrite = CheckBox(text="Replace existing files")
        self.save_button = PushButton(text="Save TIFFs, ROIs and CSV", enabled=False)
        self.extend([self.model_path, self.image, self.score_threshold, self.cells, self.tile, self.pixel_size,
                     self.run_button, self.cancel_button, self.progress, self.status, self.table, self.out_dir,
                     self.overwrite, self.save_button])
        self._loaded: dict = {}
        self.predictor: Predictor | None = None
        self.prediction = None
        self._pixel_size: float | None = None  # the one the prediction's table was measured with
        self._threshold_typed = False  # the model's own threshold applies until the user sets one
        self._showing_threshold = False
        self.worker = None
        self.score_threshold.changed.connect(self._threshold_changed)
        self.model_path.changed.connect(self._model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.save_button.changed.connect(self.save)
        self.image.changed.connect(self._pixel_size_from_layer)
        follow_layers(self, napari_viewer, self._refresh, self._stop)
        self._refresh()

    def _refresh(self, _event=None) -> None:
        """Follow the viewer's layers; with none chosen, take the first image (its pixel size follows through
        ``image.changed``; a pixel size typed in is kept while the image stays the same)."""
        self.image.reset_choices()
        if self.image.value is None and len(self.image.choices) > 1:
            self.image.value = self.image.choices[1]  # choices[0] is None (nullable)

    def _image_layers(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in self.viewer.layers if layer._type_string == "image"]

    def _pixel_size_from_layer(self, layer) -> None:
        if layer is None:
            return
        square = layer.scale[-1] == layer.scale[-2]
        self.pixel_size.value = float(layer.scale[-1]) if square and layer.scale[-1] != 1 else 0.0

    def _plane(self, layer) -> tuple[np.ndarray, str]:
        """The layer's 2-D image (RGB kept whole; for a stack, the plane on screen) and a note saying which."""
        data = layer.data[0] if layer.multiscale else layer.data
        spatial = 3 if layer.rgb else 2
        if data.ndim <= spatial:
            return np.asarray(data), ""
        position = np.round(layer.world_to_data(self.viewer.dims.point)).astype(int)[:data.ndim - spatial]
        index = tuple(int(np.clip(p, 0, n - 1)) for p, n in zip(position, data.shape))
        return np.asarray(data[index]), f" (the plane on screen, {index})"

    def _fail(self, message: str) -> None:
        fail(self.status, message, LABELS)

    def _threshold_changed(self, _value=None) -> None:
        if not self._showing_threshold:
            self._threshold_typed = True

    def _model_changed(self, _value=None) -> None:
        self._threshold_typed = False  # a new model brings its own threshold

    def _show_threshold(self, value: float) -> None:
        """Show the threshold a prediction used, without taking it as the user's."""
        self._showing_threshold = True
        try:
            self.score_threshold.value = value
        finally:
            self._showing_threshold = False

    def _stop(self) -> None:
        """On close: stop the worker, updating no widget (they may be gone already)."""
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.quit()

    def run(self) -> None:
        """Predict the chosen image in a thread worker (progress in the bar; Cancel stops between tiles)."""
        model, layer = given(self.model_path), self.image.value
        if model is None or not model.exists():
            return self._fail(f"choose a model: best.pt, a run folder or a package .zip (got {model or 'none'})")
        if layer is None:
            return self._fail("choose an image layer (open an image in napari first)")
        self._pixel_size = self.pixel_size.value or None
        threshold = self.score_threshold.value if self._threshold_typed else None  # None: the model's own
        options = {"score_threshold": threshold, "largest": CELL_CHOICES[self.cells.value],
                   "pixel_size": self._pixel_size, "tile": self.tile.value or None}
        image, which = self._plane(layer)
        # errors go to the status line, not re-raised in Qt's event loop
        self.worker = create_worker(_predict, model, self._loaded, image, safe_stem(layer.name), options,
                                    _connect={"errored": lambda err: self._fail(f"prediction failed: {err}")},
                                    _start_thread=False)
        self.worker.yielded.connect(self._progress)
        self.worker.returned.connect(lambda result: self._show(layer, *result))
        self.worker.aborted.connect(lambda: setattr(self.status, "value", "cancelled"))
        self.worker.finished.connect(self._idle)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"predicting {layer.name}{which}..."
        self.worker.start()

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _idle(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _progress(self, step: tuple[int, int]) -> None:
        done, total = step
        self.progress.max, self.progress.value = total, done

    def _show(self, layer, predictor: Predictor, prediction) -> None:
        self.predictor, self.prediction = predictor, prediction
        if not self._threshold_typed:
            self._show_threshold(predictor.default_choice.score_threshold)
        parts = self._layer(f"{layer.name} parts", prediction.parts, layer.scale,
                            colormap=part_colormap(predictor.parts))
        parts.metadata["parts"] = predictor.parts
        # cell outlines over the filled parts; the table is the cells' features (one row per label)
        features = prediction.table.assign(index=prediction.table["cell_id"])
        cells = self._layer(f"{layer.name} cells", prediction.cells, layer.scale, features=features)
        cells.contour = 2
        self.table.value = prediction.table
        self.save_button.enabled = True
        self.status.value = f"{layer.name}: {len(prediction.table)} cells"

    def _layer(self, name: str, data: np.ndarray, scale, **properties):
        # a new prediction of the same image is a new layer (napari numbers the name): a layer corrected with
        # the brush is never replaced
        if self._pixel_size:  # the image's micrometres: napari's scale bar and measurements read them
            properties["units"] = ("µm", "µm")
        return self.viewer.add_labels(data, name=name, scale=scale[-2:], **properties)

    def save(self) -> dict[str, Path] | None:
        """Write ``<image>_cells.tif``, ``_parts.tif``, ``_rois.zip`` and ``_cells.csv`` to the chosen folder.

        They hold the prediction as made (not later edits of its layers; save those with napari's File menu).
        """
        if self.prediction is None:
            return self._fail("nothing to save yet: predict an image first")
        out = given(self.out_dir)
        if out is None:
            return self._fail("choose a folder to save to")
        name, overwrite = self.prediction.name, self.overwrite.value
        table_path = out / f"{name}_cells.csv"
        try:
            clashes = [p for p in [*output_paths(out, name, rois=True).values(), table_path] if p.exists()]
            if clashes and not overwrite:  # checked first: never a part of the set written
                raise FileExistsError(f"{clashes[0]} exists" + (f" (and {len(clashes) - 1} more)"
                                                                 if len(clashes) > 1 else ""))
            out.mkdir(parents=True, exist_ok=True)
            paths = export_prediction(self.prediction, out, self.predictor.parts, self._pixel_size, rois=True,
                                      overwrite=overwrite)
            paths["table"] = write_table(self.prediction.table, table_path, overwrite=overwrite)
        except FileExistsError as err:
            return self._fail(f"{err}; tick 'Replace existing files' or choose another folder")
        except OSError as err:
            return self._fail(f"cannot save to {out}: {err}")
        show_info(f"saved {len(paths)} files to {out}")
        self.status.value = f"saved to {out}"
        return paths
