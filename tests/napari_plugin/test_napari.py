"""The napari plugin in a real (offscreen) viewer: Predict and Fine-tune widgets, and the model reader."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from conftest import REPO, SAMPLE
from skimage.io import imread

import cellrcnn
from cellrcnn import Config, Predictor
from cellrcnn.engine.hooks import Callback, Cancel, Cancelled
from cellrcnn.sample_data.sample import synthetic_sample
from cellrcnn.viz.style import part_colour

pytest.importorskip("napari", reason="the napari extra is not installed (pip install 'cellrcnn[napari]')")
pytest.importorskip("pytestqt")

from cellrcnn.napari_plugin import FinetuneWidget, PredictWidget, get_reader  # noqa: E402

WAIT_MS = 180_000  # a CPU worker; the wait ends as soon as it is done


@pytest.fixture(autouse=True)
def _no_opengl_strings(monkeypatch):
    """Qt's offscreen platform gives no OpenGL context without a display, and napari's layers ask GL for its
    extensions and texture size limits when they are added. napari's own tests stub those two queries the same way
    (napari/_vispy/_tests/test_vispy_image_layer.py, test_vispy_labels_layer.py); the viewer, its layers and the
    widgets are real."""
    from napari._vispy.layers import base, image, labels

    monkeypatch.setattr(image, "get_gl_extensions", lambda: "")
    for module in (base, image, labels):
        monkeypatch.setattr(module, "get_max_texture_sizes", lambda: (2048, 2048))


def wait_idle(qtbot, button) -> None:
    qtbot.waitUntil(lambda: button.enabled, timeout=WAIT_MS)


def test_predict_widget_adds_the_predictors_labels_and_saves_them(make_napari_viewer, qtbot, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    image = np.concatenate([synthetic_sample(seed, size=(128, 128))["image"] for seed in (5, 6)], axis=1)
    viewer.add_image(image, name="field", rgb=True, scale=(0.5, 0.5))
    widget = PredictWidget(viewer)
    widget.model_path.value = checkpoint.parent  # a run folder
    widget.image.value = viewer.layers["field"]
    assert widget.pixel_size.value == 0.5  # from the layer's scale
    widget.run()
    wait_idle(qtbot, widget.run_button)

    expected = Predictor.from_checkpoint(checkpoint).predict(image, name="field", pixel_size=0.5)
    assert len(expected.table) > 1, "the test needs cells to compare"
    cells, parts = viewer.layers["field cells"], viewer.layers["field parts"]
    np.testing.assert_array_equal(cells.data, expected.cells)
    np.testing.assert_array_equal(parts.data, expected.parts)
    assert widget.progress.value == widget.progress.max == 1  # one tile, done
    # the table as the cells layer's features, one row per label, and in the table widget
    pd.testing.assert_frame_equal(cells.features.drop(columns="index"), expected.table, check_dtype=False)
    assert list(cells.features["index"]) == list(range(1, len(expected.table) + 1))
    assert widget.table.shape == expected.table.shape
    nucleus = parts.colormap.map(np.array([2]))[0]
    np.testing.assert_allclose(nucleus[:3], part_colour("nucleus", 2, 1.0), atol=1e-6)
    assert parts.colormap.map(np.array([0]))[0][3] == 0  # background transparent
    assert tuple(cells.scale) == (0.5, 0.5) and [str(u) for u in cells.units] == ["micrometer"] * 2
    assert {"area_um2", "centroid_x_um", "diameter_um"} <= set(cells.features.columns)

    widget.out_dir.value = tmp_path / "out"
    paths = widget.save()
    assert sorted(p.name for p in paths.values()) == ["field_cells.csv", "field_cells.tif", "field_parts.tif",
                                                      "field_rois.zip"]
    np.testing.assert_array_equal(tifffile.imread(paths["cells"]), expected.cells)
    assert len(pd.read_csv(paths["table"])) == len(expected.table)
    before = paths["cells"].stat().st_mtime_ns
    assert widget.save() is None  # not replaced without the tick box
    assert "exists" in widget.status.value and paths["cells"].stat().st_mtime_ns == before
    (tmp_path / "out" / "field_cells.csv").unlink()  # one file of the set missing: still nothing written
    assert widget.save() is None and not (tmp_path / "out" / "field_cells.csv").exists()
    widget.overwrite.value = True
    assert widget.save() is not None

    # a second prediction is a new layer: a corrected one is never replaced; a typed pixel size stays
    viewer.layers["field parts"].data[0, 0] = 2
    widget.pixel_size.value = 0.0645
    widget.run()
    wait_idle(qtbot, widget.run_button)
    assert viewer.layers["field parts"].data[0, 0] == 2 and "field parts [1]" in viewer.layers
    assert widget.pixel_size.value == 0.0645 and widget.prediction.table["area_um2"].iloc[0] == pytest.approx(
        widget.prediction.table["area_px"].iloc[0] * 0.0645 ** 2)
    # "as the model was trained" above followed the model (several cells an image: all of them); now the largest
    assert widget.cells.value == "as the model was trained" and len(widget.prediction.table) == len(expected.table)
    widget.cells.value = "largest complete cell only"
    widget.run()
    wait_idle(qtbot, widget.run_button)
    largest = Predictor.from_checkpoint(checkpoint).predict(image, name="field", largest=True)
    np.testing.assert_array_equal(widget.prediction.cells, largest.cells)
    assert len(widget.prediction.table) == 1
    viewer.add_image(image[..., 0], name="plain")  # no pixel size in its scale: none carried over
    widget.image.value = viewer.layers["plain"]
    assert widget.pixel_size.value == 0.0


def test_predict_widget_uses_the_models_own_threshold_until_one_is_typed(make_napari_viewer, qtbot, checkpoint):
    """Issue 37 (9): a package's recorded threshold is not overridden by the widget's default."""
    from cellrcnn.inference.selection import CellChoice

    viewer = make_napari_viewer()
    image = synthetic_sample(5, size=(128, 128))["image"]
    viewer.add_image(image, name="cells", rgb=True)
    widget = PredictWidget(viewer)
    widget.model_path.value = checkpoint
    widget.image.value = viewer.layers["cells"]
    recorded = Predictor.from_checkpoint(checkpoint, choice=CellChoice(score_threshold=0.99))  # as a package's
    widget._loaded.update(key=(str(checkpoint), checkpoint.stat().st_mtime), predictor=recorded)
    widget.run()
    wait_idle(qtbot, widget.run_button)
    low = recorded.predict(image, name="cells", score_threshold=0.3)
    assert len(low.table) > len(widget.prediction.table), "the test needs cells between the two thresholds"
    np.testing.assert_array_equal(widget.prediction.cells, recorded.predict(image, name="cells").cells)
    assert widget.score_threshold.value == 0.99  # shown, as used
    widget.score_threshold.value = 0.3  # typed: it applies
    widget.run()
    wait_idle(qtbot, widget.run_button)
    np.testing.assert_array_equal(widget.prediction.cells, low.cells)


def test_predict_widget_in_tiles_can_be_cancelled(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    image = np.tile(synthetic_sample(7, size=(128, 128))["image"], (2, 2, 1))
    viewer.add_image(image, name="big", rgb=True)
    widget = PredictWidget(viewer)
    widget.model_path.value = checkpoint
    widget.tile.value = 128
    widget.run()
    widget.cancel()  # the worker stops at its first batch of tiles
    wait_idle(qtbot, widget.run_button)
    assert widget.status.value == "cancelled"
    assert "big cells" not in viewer.layers and widget.prediction is None


def test_predict_widget_explains_what_is_missing(make_napari_viewer, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    widget = PredictWidget(viewer)
    widget.run()
    assert "choose a model" in widget.status.value
    widget.model_path.value = checkpoint
    widget.run()
    assert "choose an image layer" in widget.status.value and widget.worker is None
    assert widget.save() is None and "predict an image first" in widget.status.value


def finetune_on_a_sample_image(viewer, index: int, checkpoint, steps: int, epochs: int = 20) -> FinetuneWidget:
    """The Fine-tune widget set to adapt ``checkpoint`` to one sample image and its part labels, as layers."""
    name = f"sample {index:02d}"
    viewer.add_image(imread(SAMPLE / "images" / f"sample_{index:02d}.png"), name=name, rgb=True)
    viewer.add_labels(imread(SAMPLE / "masks" / f"sample_{index:02d}.png"), name=f"{name} parts")
    widget = FinetuneWidget(viewer)
    widget.image.value, widget.labels.value = viewer.layers[name], viewer.layers[f"{name} parts"]
    widget.start.value, widget.steps.value, widget.epochs.value = checkpoint, steps, epochs
    widget.device.value = "cpu"
    return widget


def test_finetune_widget_adapts_a_model_with_the_recipe_on_layers(make_napari_viewer, qtbot, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    widget = finetune_on_a_sample_image(viewer, 0, checkpoint, steps=2, epochs=7)
    widget.cytoplasm_weight.value = 2.0
    widget.out.value = tmp_path / "run"
    widget.train()
    wait_idle(qtbot, widget.train_button)

    # one image, a step per epoch: the 2 steps take 2 epochs, whatever Epochs says
    assert widget.status.value.startswith("done: 2 epochs"), widget.status.value
    state = cellrcnn.load_checkpoint(tmp_path / "run" / "last.pt")
    saved, recipe = state["config"], cellrcnn.adaptation_overrides(checkpoint)
    assert state["epoch"] == 2 and saved["model"]["part_weights"] == {"cytoplasm": 2.0}
    assert saved["model"]["weights"] == str(checkpoint)
    assert (saved["train"]["steps"], saved["train"]["lr_schedule"], saved["data"]["augment"]) == (2, "cosine", "adapt")
    assert saved["model"]["target_cell_size"] == recipe["model.target_cell_size"] is not None
    assert (tmp_path / "run" / "training_data" / "sample_00_masks.tif").is_file()
    assert widget.progress.value == widget.progress.max == 2 and len(widget.history) == 2
    assert widget.figure.axes[0].lines, "the loss plot was drawn"


def test_finetune_widget_with_steps_0_trains_for_epochs(make_napari_viewer, checkpoint, tmp_path):
    widget = finetune_on_a_sample_image(make_napari_viewer(), 0, checkpoint, steps=0, epochs=3)
    train = widget.config().train
    assert (train.steps, train.epochs, train.lr_schedule) == (None, 3, "cosine")
    widget.start.line_edit.value = ""  # from COCO weights: the user's protocol
    train = widget.config().train
    assert (train.steps, train.epochs, train.lr, train.lr_step) == (None, 3, 0.001, 5)


def test_finetune_widget_cancel_leaves_a_resumable_run(make_napari_viewer, qtbot, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    widget = finetune_on_a_sample_image(viewer, 1, checkpoint, steps=50)
    widget.out.value = out = tmp_path / "run"
    widget.train()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=WAIT_MS)
    widget.cancel()
    wait_idle(qtbot, widget.train_button)

    assert "cancelled" in widget.status.value, widget.status.value
    done = cellrcnn.load_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= done < 50 and len(pd.read_csv(out / "history.csv")) == done
    # resumed, it goes on from there (one more epoch, then cancelled again)
    again = Cancel()
    with pytest.raises(Cancelled):
        cellrcnn.fit(Config(), out / "training_data", out, resume=True, quiet=True,
                     hooks=[Callback(lambda row, history: again.cancel()), again])
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == list(range(1, done + 2))


def test_finetune_widget_refuses_a_used_run_folder_and_missing_layers(make_napari_viewer, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    widget.train()
    assert "choose a run folder" in widget.status.value
    widget.out.value = checkpoint.parent
    widget.train()
    assert "is not empty" in widget.status.value and "--resume" in widget.status.value
    widget.out.value = tmp_path / "new"
    widget.train()
    assert "choose an image layer" in widget.status.value and widget.worker is None
    viewer.add_image(np.zeros((64, 64), np.uint8), name="im")
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="wrong size")
    widget.image.value, widget.labels.value = viewer.layers["im"], viewer.layers["wrong size"]
    widget.train()
    assert "of the image's size 64x64" in widget.status.value and not (tmp_path / "new" / "training_data").exists()
    viewer.add_labels(np.arange(64 * 64).reshape(64, 64) % 7, name="cells")
    widget.labels.value = viewer.layers["cells"]
    widget.train()
    assert "'cells' holds labels up to 6, not part labels" in widget.status.value
    assert not (tmp_path / "new").exists()


def test_reader_opens_a_run_in_the_predict_widget(make_napari_viewer, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    (tmp_path / "notes.zip").write_bytes(b"not a zip")
    assert get_reader(str(tmp_path / "notes.zip")) is None and get_reader(str(tmp_path)) is None
    # only cellrcnn's own files: not a plain state dict, not a zip whose central directory is damaged
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "resnet18.pt")
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\n")
    raw = bytearray(whole.read_bytes())
    raw[raw.index(b"PK\x01\x02")] = 0  # the central directory's entry damaged, its end record intact
    (tmp_path / "damaged.zip").write_bytes(bytes(raw))
    assert zipfile.is_zipfile(tmp_path / "damaged.zip")  # what the check before reading it says
    assert get_reader(str(tmp_path / "resnet18.pt")) is None and get_reader(str(tmp_path / "damaged.zip")) is None
    reader = get_reader(str(checkpoint.parent))
    assert reader is not None
    assert reader(str(checkpoint.parent)) == [(None,)]
    widget = viewer.window.dock_widgets["Predict cells (cellrcnn)"]
    assert widget.model_path.value == checkpoint
    assert len(viewer.layers) == 0


def test_the_screenshot_script_shows_the_widget_and_the_predicted_layers(checkpoint, tmp_path):
    out = tmp_path / "napari.png"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_napari.py"), "--model", str(checkpoint),
                           "--image", str(SAMPLE / "images" / "sample_02.png"), "--out", str(out),
                           "--size", "900", "600"], capture_output=True, text=True,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0, done.stderr[-2000:]
    shot = imread(out)
    assert shot.shape[1] == 900 and shot.shape[0] >= 600 and "sample_02:" in done.stdout and "cells" in done.stdout
    # the canvas shows the parts in their colours (painted from the layers when there is no OpenGL)
    r, g, b = np.moveaxis(shot[..., :3].astype(int), -1, 0)
    assert part_colour("cytoplasm", 1) == (0, 190, 255) and ((b > 180) & (r < 100) & (g > 120)).sum() > 100
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_napari.py"), "--model",
                            str(checkpoint), "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr


def test_a_widget_names_the_settings_of_a_message_by_its_own_labels(make_napari_viewer):
    widget = PredictWidget(make_napari_viewer())
    widget._fail("keep fewer cells: score_threshold=0.9 or largest=True; data.snap_values=True is no setting here")
    assert widget.status.value == ("keep fewer cells: 'Score threshold' 0.9 or 'Cells'; data.snap_values=True is no "
                                   "setting here")
