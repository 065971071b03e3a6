"""Physical units through prediction: calibrated images in, calibrated results out, and a calibrated model
applied at its own physical resolution whatever the image's magnification."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import SAMPLE, files_under, fails_here, run_command
from skimage.io import imread
from skimage.transform import rescale

import cellrcnn
from cellrcnn.inference.predictor import Predictor
from cellrcnn.io.calibration import PixelSize, pixel_size_of

zarr = pytest.importorskip("zarr")


def ome_tiff(path, image, size):
    tifffile.imwrite(path, image, ome=True, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeY": size})
    return path


def test_a_calibrated_ome_tiff_comes_back_calibrated(checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    ome_tiff(images / "a.ome.tif", imread(SAMPLE / "images" / "sample_02.png"), 0.325)
    done = run_command("predict", checkpoint, images, "--out", tmp_path / "out", "--quiet", "--geojson")
    assert done.returncode == 0, done.stderr
    for kind in ("cells", "parts"):  # Fiji and QuPath read the calibration of the input
        path = tmp_path / "out" / f"a_{kind}.tif"
        with tifffile.TiffFile(path) as tif:
            assert tif.imagej_metadata["unit"] == "micron"
        size = pixel_size_of(path)
        assert size.source == "ImageJ" and math.isclose(size.x, 0.325, rel_tol=1e-6) and \
            math.isclose(size.y, 0.325, rel_tol=1e-6)
    table = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert len(table) >= 2
    for column in ("area", "cytoplasm_area", "nucleus_area"):
        np.testing.assert_allclose(table[f"{column}_um2"], table[f"{column}_px"] * 0.325**2, rtol=1e-9)
    np.testing.assert_allclose(table["centroid_x_um"], (table["centroid_x"] + 0.5) * 0.325, rtol=1e-9)
    cells = tifffile.imread(tmp_path / "out" / "a_cells.tif")
    assert sorted(np.unique(cells[cells > 0])) == sorted(table["cell_id"])
    # --pixel-size wins over the file, and outside any microscope's range it is refused before anything is read
    again = run_command("predict", checkpoint, images, "--out", tmp_path / "given", "--quiet", "--pixel-size", "0.5")
    assert again.returncode == 0, again.stderr
    assert pixel_size_of(tmp_path / "given" / "a_cells.tif").x == pytest.approx(0.5)
    line = fails_here("predict", checkpoint, images, "--out", tmp_path / "bad", "--pixel-size", "0", at=tmp_path)
    assert "--pixel-size" in line


def test_a_calibrated_model_reads_an_image_magnified_twice_at_its_own_resolution(checkpoint, caplog):
    """The sample model told that its images had 0.5 µm pixels; the same cells magnified 2x with 0.25 µm pixels
    are resized by half for it, and found as in the original, with no scale given."""
    trained = Predictor.from_checkpoint(checkpoint, device="cpu")
    config = dataclasses.replace(trained.config, model=dataclasses.replace(trained.config.model, pixel_size=0.5))
    predictor = Predictor(trained.model, config, "cpu")
    original = imread(SAMPLE / "images" / "sample_05.png")
    twice = rescale(original, 2, order=1, channel_axis=-1, preserve_range=True).round().astype(np.uint8)
    base = predictor.predict(original, pixel_size=0.5)
    with caplog.at_level("INFO", logger="cellrcnn.inference"):
        physical = predictor.predict(twice, pixel_size=0.25)
    assert "resized by" in caplog.text and physical.pixel_size == PixelSize(0.25, 0.25, "given")
    assert "another magnification" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cellrcnn.inference"):
        uncalibrated = predictor.predict(twice)  # no pixel size: the training scale, cells twice the trained size
        predictor.predict(twice)
    # once, naming the way out (in the API's terms, or the CLI's once a command has run in this process)
    assert caplog.text.count("another magnification") == 1 and "auto" in caplog.text
    # without metadata, --cell-diameter auto: the demo's training fitted its size model (its 9 training images),
    # which reads the magnification from the image's style
    auto = Predictor(trained.model, config, "cpu", cell_diameter="auto")  # each image at its own estimate
    assert trained.model.size_model.is_fitted
    assert auto.estimate_scale(twice) == pytest.approx(config.model.input_scale / 2, rel=0.2)
    assert len(auto.predict(twice).table) >= 1 and auto.scale == config.model.input_scale
    truth = rescale(base.cells > 0, 2, order=0) > 0
    dice_physical = cellrcnn.dice(physical.cells > 0, truth)
    assert dice_physical > 0.9 and dice_physical > cellrcnn.dice(uncalibrated.cells > 0, truth)
    # areas in µm² agree between the two magnifications
    assert physical.table["area_um2"].sum() == pytest.approx(base.table["area_um2"].sum(), rel=0.1)
    # a scale given by hand wins over the pixel sizes
    by_hand = Predictor(trained.model, config, "cpu", scale=predictor.scale)
    assert by_hand.scale_for_pixel_size(PixelSize(0.25, 0.25)) == predictor.scale
    assert predictor.scale_for_pixel_size(PixelSize(0.25, 0.25)) == pytest.approx(predictor.scale / 2)


def test_an_ome_zarr_field_is_predicted_in_tiles_and_gets_its_labels_in_its_store(checkpoint, tmp_path):
    from ome_zarr.writer import write_image

    tiles = [imread(SAMPLE / "images" / f"sample_{i:02d}.png") for i in range(4)]
    field = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    store = tmp_path / "plate" / "well.ome.zarr"
    root = zarr.open_group(str(store), mode="w")
    write_image(np.moveaxis(field, -1, 0), root, axes="cyx", scale={"y": 0.4, "x": 0.4},
                axes_units={"y": "micrometer", "x": "micrometer"}, storage_options={"chunks": (3, 64, 64)})
    out = tmp_path / "out"
    done = run_command("predict", checkpoint, store.parent, "--out", out, "--quiet", "--tile", "160")
    assert done.returncode == 0, done.stderr
    cells = tifffile.imread(out / "well_cells.tif")
    stored = zarr.open_group(str(store / "labels" / "cells"), mode="r")
    level = stored[stored.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]]
    np.testing.assert_array_equal(level[...], cells)
    assert pixel_size_of(store / "labels" / "parts") == PixelSize(0.4, 0.4, "NGFF")
    assert (cells > 0).any() and len(pd.read_csv(out / "cells.csv")) == cells.max()
    # napari's OME-Zarr reader shows the image with both label layers
    from napari_ome_zarr import napari_get_reader

    layers = napari_get_reader(str(store))(str(store))
    assert sorted(kind for _, _, kind in layers) == ["image", "labels", "labels"]
    # a second run does not overwrite the labels in the store silently
    before = files_under(store)
    line = fails_here("predict", checkpoint, store, "--out", tmp_path / "again", at=tmp_path)
    assert "already holds predicted labels" in line and "--overwrite" in line and files_under(store) == before
