"""Pixel sizes read from the files labs have (ImageJ TIFF, OME-TIFF, OME-Zarr, CZI), written by the tests
themselves with the writers labs' software uses (tifffile, ome-zarr, pylibCZIrw)."""

import math

import numpy as np
import pytest
import tifffile

from cellrcnn.config import DataConfig
from cellrcnn.io import DataError
from cellrcnn.io.calibration import PixelSize, pixel_size_of, training_pixel_size
from cellrcnn.io.fields import open_field
from cellrcnn.io.files import read_raw_axes
from cellrcnn.io.folders import find_pairs, list_images
from cellrcnn.io.intensity import read_image

zarr = pytest.importorskip("zarr")
ome_writer = pytest.importorskip("ome_zarr.writer")
czi = pytest.importorskip("pylibCZIrw.czi")

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (60, 80, 3), dtype=np.uint8)


def imagej_tiff(path, y, x, unit="micron", image=IMAGE):
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / x, 1 / y), metadata={"unit": unit})
    return path


def ome_tiff(path, y, x, unit="µm", image=IMAGE):
    tifffile.imwrite(path, image, ome=True, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeY": y, "PhysicalSizeX": x, "PhysicalSizeYUnit": unit,
                               "PhysicalSizeXUnit": unit})
    return path


def ome_zarr(path, y, x, unit="micrometer", image=IMAGE, version="0.5"):  # noqa: PLR0913
    from ome_zarr.format import FormatV04, FormatV05

    fmt = FormatV05() if version == "0.5" else FormatV04()
    root = zarr.open_group(str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
    ome_writer.write_image(np.moveaxis(image, -1, 0), root, axes="cyx", fmt=fmt, scale={"y": y, "x": x},
                           axes_units={"y": unit, "x": unit} if unit else None)
    return path


def czi_file(path, y, x, image=IMAGE):
    with czi.create_czi(str(path), exist_ok=True) as writer:
        writer.write(np.ascontiguousarray(image[..., ::-1]), plane={"C": 0, "Z": 0, "T": 0})  # CZI keeps BGR
        writer.write_metadata(document_name=path.stem, scale_x=x * 1e-6, scale_y=y * 1e-6)  # metres
    return path


@pytest.mark.parametrize("write, source", [(imagej_tiff, "ImageJ"), (ome_tiff, "OME"), (ome_zarr, "NGFF"),
                                           (czi_file, "CZI")])
def test_each_format_reads_back_its_pixel_size_and_its_pixels(tmp_path, write, source):
    suffix = {"ImageJ": ".tif", "OME": ".ome.tif", "NGFF": ".ome.zarr", "CZI": ".czi"}[source]
    path = write(tmp_path / f"cells{suffix}", 0.325, 0.25)
    size = pixel_size_of(path)
    assert size.source == source and size.unit == "µm"
    assert math.isclose(size.y, 0.325, rel_tol=1e-6) and math.isclose(size.x, 0.25, rel_tol=1e-6)
    assert math.isclose(size.area, 0.325 * 0.25, rel_tol=1e-6)
    # the pixels too, in RGB order, and the field knows its calibration
    np.testing.assert_array_equal(read_image(path), IMAGE / np.float32(255))
    field = open_field(path)
    assert field.name == "cells" and field.pixel_size == size
    np.testing.assert_array_equal(field.read(10, 30, 5, 70), IMAGE[10:30, 5:70] / np.float32(255))
    # data.pixel_size wins over the file
    assert open_field(path, DataConfig(pixel_size=0.5)).pixel_size == PixelSize(0.5, 0.5, "given")


@pytest.mark.parametrize("unit, value", [("nm", 325.0), ("mm", 0.000325), ("µm", 0.325)])
def test_units_are_converted_to_micrometres(tmp_path, unit, value):
    size = pixel_size_of(ome_tiff(tmp_path / "a.ome.tif", value, value, unit=unit))
    assert math.isclose(size.x, 0.325, rel_tol=1e-9)


def test_files_that_state_no_size_give_none(tmp_path):
    from skimage.io import imsave

    imsave(tmp_path / "a.png", IMAGE, check_contrast=False)
    tifffile.imwrite(tmp_path / "plain.tif", IMAGE, resolution=(72, 72))  # a screen's dpi, not a microscope's
    tifffile.imwrite(tmp_path / "pixels.tif", IMAGE, imagej=True)  # ImageJ without a unit: pixels
    ome_zarr(tmp_path / "b.zarr", 1.0, 1.0, unit=None)  # a scale without a unit is in pixels
    for name in ("a.png", "plain.tif", "pixels.tif", "b.zarr"):
        assert pixel_size_of(tmp_path / name) is None, name
    assert open_field(tmp_path / "a.png").pixel_size is None


@pytest.mark.parametrize("value", [0.0, -0.5, float("nan"), float("inf"), 1e9])
def test_absurd_sizes_are_one_line_naming_the_file(tmp_path, value):
    path = tmp_path / "bad.ome.tif"
    tifffile.imwrite(path, IMAGE, ome=True, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": value, "PhysicalSizeY": value})
    with pytest.raises(DataError) as caught:
        pixel_size_of(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "--pixel-size" in message
    with pytest.raises(DataError, match="bad.ome.tif"):
        open_field(path)
    assert open_field(path, DataConfig(pixel_size=0.2)).pixel_size.x == 0.2  # given: the file's is not read


def test_a_file_whose_metadata_contradicts_itself_is_one_line(tmp_path):
    # OME-XML says 0.2 µm, the TIFF resolution tags (centimetres, as Bio-Formats writes them beside it) 0.5 µm
    path = tmp_path / "both.ome.tif"
    tifffile.imwrite(path, IMAGE, ome=True, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    with pytest.raises(DataError, match="contradicts itself") as caught:
        pixel_size_of(path)
    assert "\n" not in str(caught.value) and "both.ome.tif" in str(caught.value)
    # agreeing statements are one size
    agree = tmp_path / "agree.ome.tif"
    tifffile.imwrite(agree, IMAGE, ome=True, photometric="rgb", resolution=(5e4, 5e4), resolutionunit="CENTIMETER",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    assert pixel_size_of(agree) == PixelSize(0.2, 0.2, "OME")


def test_an_ome_zarr_is_read_chunk_by_chunk_and_a_folder_of_stores_pairs_with_ngff_labels(tmp_path):
    from cellrcnn.export.ngff import write_ngff_labels

    big = RNG.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    store = ome_zarr(tmp_path / "field.ome.zarr", 0.5, 0.5, image=big, version="0.4")  # NGFF 0.4, zarr v2
    field = open_field(store)
    assert field.mapped and field.shape == (300, 200)
    np.testing.assert_array_equal(field.read(250, 300, 100, 200), big[250:, 100:] / np.float32(255))
    assert read_raw_axes(store)[1] == "CYX"
    parts = np.zeros((300, 200), np.uint8)
    parts[40:90, 40:90], parts[55:75, 55:75] = 1, 2
    cells = (parts > 0).astype(np.uint16)
    write_ngff_labels(store, {"parts": parts, "cells": cells}, field.pixel_size)
    assert list_images(tmp_path) == [store]
    pairs = find_pairs(tmp_path, DataConfig(part_values=(0, 1, 2)))
    assert [(p.image, p.parts) for p in pairs] == [(store, store / "labels" / "parts")]
    assert pixel_size_of(store / "labels" / "parts") == PixelSize(0.5, 0.5, "NGFF")
    with pytest.raises(DataError, match="already in the store"):
        write_ngff_labels(store, {"parts": parts})


def test_damaged_stores_are_one_line_naming_them(tmp_path):
    store = ome_zarr(tmp_path / "a.ome.zarr", 0.5, 0.5)
    (store / "zarr.json").write_text("{ not json")
    with pytest.raises(DataError, match="a.ome.zarr"):
        open_field(store)
    gone = ome_zarr(tmp_path / "b.ome.zarr", 0.5, 0.5)
    import shutil

    shutil.rmtree(gone / "s0")
    with pytest.raises(DataError, match="b.ome.zarr.*cannot be opened"):
        open_field(gone)


def test_training_records_the_median_size_and_says_when_images_disagree(tmp_path, caplog):
    from skimage.io import imsave

    paths = [ome_tiff(tmp_path / f"{i}.ome.tif", size, size) for i, size in enumerate((0.2, 0.25, 0.3))]
    with caplog.at_level("INFO", logger="cellrcnn.io"):
        assert training_pixel_size(paths) == pytest.approx(0.25)
    assert "from 0.2 to 0.3" in caplog.text
    imsave(tmp_path / "plain.png", IMAGE, check_contrast=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="cellrcnn.io"):
        assert training_pixel_size([*paths[:2], tmp_path / "plain.png"]) == pytest.approx(0.225)
    assert "1 of 3 training images state no pixel size" in caplog.text
    assert training_pixel_size([tmp_path / "plain.png"]) is None
    assert training_pixel_size([tmp_path / "plain.png"], given=0.5) == 0.5  # data.pixel_size: files not read


def test_the_bioformats2raw_layout_reads_its_first_series_and_takes_its_labels_there(tmp_path):
    """QuPath and Bio-Formats export OME-Zarr through bioformats2raw: the image is series ``0`` of the store."""
    from cellrcnn.export.ngff import write_ngff_labels
    from cellrcnn.io.calibration import is_ome_zarr, ngff_image

    store = tmp_path / "slide.zarr"
    root = zarr.open_group(str(store), mode="w")
    root.attrs["bioformats2raw.layout"] = 3
    ome_zarr(store / "0", 0.5, 0.4)
    assert is_ome_zarr(store) and ngff_image(store) == store / "0"
    assert pixel_size_of(store) == PixelSize(0.5, 0.4, "NGFF")
    np.testing.assert_array_equal(open_field(store).read(0, 60, 0, 80), IMAGE / np.float32(255))
    assert list_images(tmp_path) == [store] and list_images(store) == [store]
    parts = np.zeros(IMAGE.shape[:2], np.uint8)
    parts[10:40, 10:40], parts[20:30, 20:30] = 1, 2
    write_ngff_labels(store, {"parts": parts}, pixel_size_of(store))
    assert (store / "0" / "labels" / "parts").is_dir()
    assert [(p.image, p.parts) for p in find_pairs(tmp_path, DataConfig())] == [(store, store / "0" / "labels" / "parts")]
