"""Synthetic fields of view, their TIFF files, and the mosaic of real WBC crops."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import REPO, WBC_DIR
from skimage.io import imsave
from skimage.measure import label as connected_components

import cellrcnn.sample_data.field as synthetic
from cellrcnn import DataConfig, DataError, find_pairs
from cellrcnn.io.files import read_raw
from cellrcnn.io.masks import map_part_values, read_labels
from cellrcnn.sample_data.field import synthetic_field
from cellrcnn.sample_data.files import write_field
from cellrcnn.sample_data.mosaic import wbc_mosaic
from cellrcnn.sample_data.sample import synthetic_sample

WBC = DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255))


@pytest.fixture(scope="module")
def field():
    return synthetic_field((384, 448), seed=7, cell_diameter=24)


def touching_labels(cells: np.ndarray) -> set[int]:
    """Labels of cells that share an edge with another cell."""
    found = set()
    for a, b in ((cells[1:], cells[:-1]), (cells[:, 1:], cells[:, :-1])):
        meet = (a != b) & (a > 0) & (b > 0)
        found |= set(a[meet].tolist()) | set(b[meet].tolist())
    return found


# --- the field --------------------------------------------------------------------------------------------

def test_field_has_the_documented_types_and_shapes(field):
    assert field["image"].dtype == np.uint16 and field["image"].shape == (2, 384, 448)
    assert field["cells"].dtype == np.uint32 and field["cells"].shape == (384, 448)
    assert field["parts"].dtype == np.uint8 and set(np.unique(field["parts"])) == {0, 1, 2}
    n = len(field["centres"])
    assert field["centres"].shape == (n, 2) and field["diameters"].shape == (n,)
    assert synthetic_field(256, seed=0)["cells"].shape == (256, 256)


def test_same_seed_same_field_other_seed_other_field(field):
    again = synthetic_field((384, 448), seed=7, cell_diameter=24)
    for key in ("image", "cells", "parts", "centres"):
        np.testing.assert_array_equal(field[key], again[key], err_msg=key)
    other = synthetic_field((384, 448), seed=8, cell_diameter=24)
    assert not np.array_equal(field["cells"], other["cells"])
    assert not np.array_equal(field["image"], other["image"])


def test_rendering_band_by_band_leaves_no_seams(field, monkeypatch):
    monkeypatch.setattr(synthetic, "_BAND", 37)
    banded = synthetic_field((384, 448), seed=7, cell_diameter=24)
    for key in ("image", "cells", "parts"):
        np.testing.assert_array_equal(field[key], banded[key], err_msg=key)


def test_every_cell_has_one_nucleus_inside_it_with_cytoplasm_around(field):
    cells, parts = field["cells"].astype(np.int64), field["parts"]
    n = len(field["centres"])
    np.testing.assert_array_equal(np.unique(cells), np.arange(n + 1))  # labels 1..N, every one present
    np.testing.assert_array_equal(parts > 0, cells > 0)  # cytoplasm is the cell minus its nucleus
    nuclei = connected_components(parts == 2, connectivity=1)
    assert nuclei.max() == n
    owner = np.zeros(n + 1, dtype=np.int64)
    np.maximum.at(owner, nuclei.ravel(), cells.ravel())
    lowest = np.full(n + 1, n + 1, dtype=np.int64)
    np.minimum.at(lowest, nuclei.ravel(), cells.ravel())
    assert (owner[1:] == lowest[1:]).all()  # each nucleus within a single cell
    assert sorted(owner[1:]) == list(range(1, n + 1))  # and each cell holds exactly one
    # a nucleus never borders another cell or the background: cytoplasm surrounds it
    for a, b, pa in ((cells[1:], cells[:-1], parts[1:]), (cells[:-1], cells[1:], parts[:-1]),
                     (cells[:, 1:], cells[:, :-1], parts[:, 1:]), (cells[:, :-1], cells[:, 1:], parts[:, :-1])):
        assert not ((pa == 2) & (a != b)).any()


def test_stains_are_bright_where_they_should_be_and_use_the_16_bit_range(field):
    image, cells, parts = field["image"].astype(np.float64), field["cells"], field["parts"]
    nucleus, cytoplasm, background = parts == 2, parts == 1, parts == 0
    assert image[0][nucleus].mean() > 3 * image[0][cytoplasm].mean()
    assert image[1][cytoplasm].mean() > 3 * image[1][background].mean()
    assert image[1][nucleus].mean() < image[1][cytoplasm].mean()
    outline = np.zeros(cells.shape, dtype=bool)
    outline[1:-1, 1:-1] = (cells[1:-1, 1:-1] > 0) & (
        (cells[:-2, 1:-1] != cells[1:-1, 1:-1]) | (cells[2:, 1:-1] != cells[1:-1, 1:-1])
        | (cells[1:-1, :-2] != cells[1:-1, 1:-1]) | (cells[1:-1, 2:] != cells[1:-1, 1:-1]))
    assert image[1][outline].mean() > image[1][cytoplasm & ~outline].mean()  # membrane stain: brightest at the edge
    assert 100 < np.median(image[:, background]) < 500  # camera offset and a little ambient light
    assert 10000 < image.max() < 65535 and image.min() > 0  # a good part of the range, never clipped


def test_cell_count_follows_area_over_diameter_squared():
    counts = {}
    for diameter in (16, 32):
        field = synthetic_field(512, seed=1, cell_diameter=diameter, coverage=0.3)
        expected = 0.3 * 512 * 512 / (np.pi / 4 * diameter ** 2)
        counts[diameter] = len(field["centres"])
        assert 0.85 * expected < counts[diameter] < 1.1 * expected, (diameter, counts[diameter], expected)
        assert 0.8 * diameter < np.mean(field["diameters"]) < 1.2 * diameter
        assert field["diameters"].min() >= 0.8 * diameter - 1e-9 and field["diameters"].max() <= 1.2 * diameter + 1e-9
        touching = len(touching_labels(field["cells"])) / counts[diameter]
        assert 0.05 < touching < 0.4  # some touch, most do not
    assert 3 < counts[16] / counts[32] < 5


def test_placed_cells_lie_exactly_where_asked():
    centres = [(99.5, 128.0), (200.0, 63.5), (0.0, 255.0)]
    field = synthetic_field(256, seed=2, cell_diameter=30, centres=centres, diameters=(30, 20, 30))
    cells = field["cells"]
    np.testing.assert_array_equal(field["centres"][:3], centres)
    np.testing.assert_array_equal(field["diameters"][:3], (30, 20, 30))
    for label, (y, x) in enumerate(centres[:2], 1):
        ys, xs = np.nonzero(cells == label)
        assert abs(ys.mean() - y) < 0.75 and abs(xs.mean() - x) < 0.75
        assert field["parts"][int(np.floor(y)), int(np.floor(x))] == 2  # the nucleus is centred on it
        assert field["parts"][int(np.ceil(y)), int(np.ceil(x))] == 2
    assert cells[99, 128] == cells[100, 128] == 1  # straddles the boundary between rows 99 and 100
    assert cells[0, 255] == 3  # a cell in the corner, cut by the border
    assert 0.9 < (cells == 1).sum() / (np.pi / 4 * 30 ** 2) < 1.1
    alone = synthetic_field(256, seed=2, cell_diameter=30, coverage=0.0, centres=centres[:1])
    assert alone["cells"].max() == 1 and len(alone["centres"]) == 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="outside"):
        synthetic_field(256, seed=0, centres=[(256.0, 10.0)])
    with pytest.raises(ValueError, match="cell_diameter"):
        synthetic_field(256, seed=0, cell_diameter=4)
    with pytest.raises(ValueError, match="size"):
        synthetic_field((256, 8), seed=0)
    with pytest.raises(ValueError, match="seed"):
        synthetic_field(256, seed=-1)


def test_synthetic_sample_is_unchanged():
    sample = synthetic_sample(0)
    assert sample["image"].shape == (128, 128, 3) and sample["image"].dtype == np.uint8
    # the bundled data/sample and the demo depend on it, bit for bit
    digest = hashlib.sha256(sample["image"].tobytes() + sample["parts"].tobytes()).hexdigest()
    assert digest == "3210e7036ba187e02542f84653d4747ba3a35589198cf906280aa099c3db9169"


# --- writing ----------------------------------------------------------------------------------------------

def test_write_field_round_trip(tmp_path, field):
    paths = write_field(tmp_path / "fields", field, name="f0", pixel_size=0.325)
    assert {k: p.name for k, p in paths.items()} == {"image": "f0.tif", "cells": "f0_cells.tif",
                                                     "parts": "f0_masks.tif"}
    mapped = tifffile.memmap(paths["image"])  # uncompressed and contiguous
    assert mapped.shape == (2, 384, 448) and mapped.dtype == np.uint16
    np.testing.assert_array_equal(mapped, field["image"])
    del mapped
    with tifffile.TiffFile(paths["image"]) as tif:
        assert tif.is_imagej and tif.series[0].axes == "CYX" and tif.imagej_metadata["unit"] == "micron"
        x_resolution = tif.pages[0].tags["XResolution"].value
        assert abs(x_resolution[1] / x_resolution[0] - 0.325) < 1e-6
        assert "seed 7" in tif.imagej_metadata["Info"]
    cells, parts = tifffile.imread(paths["cells"]), tifffile.imread(paths["parts"])
    assert cells.dtype == np.uint16 and parts.dtype == np.uint8
    np.testing.assert_array_equal(cells, field["cells"])
    np.testing.assert_array_equal(parts, field["parts"])
    config = DataConfig(encoding="cells+parts")
    (pair,) = find_pairs(tmp_path / "fields", config)
    assert (pair.image, pair.cells, pair.parts) == (paths["image"], paths["cells"], paths["parts"])


def test_write_field_refuses_to_overwrite_and_writes_nothing_then(tmp_path, field):
    (tmp_path / "field_masks.tif").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="field_masks.tif"):
        write_field(tmp_path, field)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["field_masks.tif"]
    assert (tmp_path / "field_masks.tif").read_bytes() == b"keep"
    paths = write_field(tmp_path / "one.tif", field, overwrite=True)  # a .tif path names the image
    assert paths["parts"] == tmp_path / "one_masks.tif"
    write_field(tmp_path, field, overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "field_masks.tif"), field["parts"])
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_many_labels_are_written_as_float32_that_imagej_reads(tmp_path):
    cells = np.arange(300 * 300, dtype=np.uint32).reshape(300, 300)
    field = {"image": np.zeros((2, 300, 300), np.uint16), "cells": cells, "parts": (cells > 0).astype(np.uint8)}
    paths = write_field(tmp_path, field)
    written = tifffile.imread(paths["cells"])
    assert written.dtype == np.float32 and np.array_equal(written, cells) and written.max() == 89999
    assert read_labels(paths["cells"]).max() == 89999


def run_script(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_field.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_make_field_script_writes_a_field_and_refuses_to_overwrite(tmp_path):
    done = run_script(tmp_path, "--size", "256x320", "--seed", "3", "--cell-diameter", "20", "--pixel-size", "0.5")
    assert done.returncode == 0, done.stderr
    field = synthetic_field((256, 320), seed=3, cell_diameter=20)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "field.tif"), field["image"])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "field_cells.tif"), field["cells"])
    again = run_script(tmp_path, "--size", "256")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    bad = run_script(tmp_path / "new", "--size", "abc")
    assert bad.returncode == 2 and "--size" in bad.stderr and len(bad.stderr.strip().splitlines()[-1]) < 200
    assert not (tmp_path / "new").exists()


# --- the mosaic -------------------------------------------------------------------------------------------

def check_mosaic(mosaic, pairs, config, size=None):
    total = 0
    for i, (pair, window, crop) in enumerate(zip(pairs, mosaic["windows"], mosaic["crops"])):
        y0, y1, x0, x1 = window
        cy0, cy1, cx0, cx1 = crop
        if size is not None:
            assert (y1 - y0, x1 - x0) == size
        image = read_raw(pair.image)[cy0:cy1, cx0:cx1]
        parts = map_part_values(read_labels(pair.parts), config.part_values)[cy0:cy1, cx0:cx1]
        np.testing.assert_array_equal(mosaic["image"][y0:y1, x0:x1], image, err_msg=pair.name)
        np.testing.assert_array_equal(mosaic["parts"][y0:y1, x0:x1], parts, err_msg=pair.name)
        own = mosaic["cells"][y0:y1, x0:x1]
        expected = connected_components(parts > 0, connectivity=1)
        ids = np.unique(own[own > 0])
        assert len(ids) == expected.max() and ids.min() == total + 1 and ids.max() == total + len(ids)
        np.testing.assert_array_equal(own > 0, parts > 0)
        total += len(ids)
        assert mosaic["names"][i] == pair.image.stem
    assert mosaic["cells"].max() == total and mosaic["cells"].dtype == np.int32


def test_mosaic_of_generated_crops(tmp_path):
    for i in range(5):
        sample = synthetic_sample(i, size=(64, 72) if i != 3 else (70, 80))
        imsave(tmp_path / f"c{i}.png", sample["image"], check_contrast=False)
        imsave(tmp_path / f"c{i}_masks.png", sample["parts"], check_contrast=False)
    config = DataConfig()
    pairs = find_pairs(tmp_path, config)
    with pytest.raises(DataError, match="c3.png: 80x70 pixels"):
        wbc_mosaic(pairs, config, columns=2)
    mosaic = wbc_mosaic(pairs, config, columns=2, size=(64, 72))
    assert mosaic["image"].shape == (3 * 64, 2 * 72, 3) and mosaic["image"].dtype == np.uint8
    assert mosaic["windows"][3] == (64, 128, 72, 144) and mosaic["crops"][3] == (3, 67, 4, 76)
    check_mosaic(mosaic, pairs, config, size=(64, 72))
    assert (mosaic["parts"][128:, 72:] == 0).all() and (mosaic["cells"][128:, 72:] == 0).all()
    apart = wbc_mosaic(pairs, config, columns=2, size=(64, 72), fill=(10, 20, 30), gap=5)
    assert apart["image"].shape == (3 * 64 + 2 * 5, 2 * 72 + 5, 3) and apart["windows"][3] == (69, 133, 77, 149)
    check_mosaic(apart, pairs, config, size=(64, 72))
    assert (apart["image"][64:69] == (10, 20, 30)).all() and (apart["image"][:, 72:77] == (10, 20, 30)).all()
    assert not apart["cells"][64:69].any() and not apart["parts"][:, 72:77].any()
    with pytest.raises(ValueError, match="gap"):
        wbc_mosaic(pairs, config, columns=2, size=(64, 72), gap=-1)


@pytest.mark.wbc
def test_wbc_mosaic_keeps_each_crop_and_its_cells_in_place():
    pairs = find_pairs(WBC_DIR, WBC)
    same_size = pairs[:10]  # 001..010 are all 120x120
    mosaic = wbc_mosaic(same_size, WBC, columns=4)
    assert mosaic["image"].shape == (360, 480, 3) and mosaic["parts"].shape == mosaic["cells"].shape == (360, 480)
    assert mosaic["windows"][5] == (120, 240, 120, 240)
    check_mosaic(mosaic, same_size, WBC)
    with pytest.raises(DataError, match="072.bmp"):  # the first crop of another size
        wbc_mosaic(pairs[65:75], WBC, columns=5)
    cut = wbc_mosaic(pairs[65:75], WBC, columns=5, size=(100, 100))
    check_mosaic(cut, pairs[65:75], WBC, size=(100, 100))
