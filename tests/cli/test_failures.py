"""Every failure a user can cause is one line on stderr, exit code 2, and nothing new on disk; a bug is a traceback
with a request to report it (exit code 1). One test per case a probe of the commands found (issue 24); the cases
that need a package are in tests/export/test_share.py, an interrupted prediction in tests/inference/test_predict.py.
"""

import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import SAMPLE, fails_here, fails_in_one_line

from cellrcnn.cli.common import command

IMAGE = SAMPLE / "images" / "sample_00.png"


def package_zip(path: Path, rdf: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", rdf)
    return path


def test_a_package_with_bad_yaml_or_a_python_tag_is_one_line_and_runs_nothing(tmp_path):
    bad = package_zip(tmp_path / "bad.zip", "type: model\n  - : [\n")
    line = fails_in_one_line("predict", bad, IMAGE, "--out", tmp_path / "out", at=tmp_path)
    assert "bad.zip: its description (rdf.yaml) cannot be read" in line and "export the package again" in line
    flag = tmp_path / "ran"
    tagged = package_zip(tmp_path / "tagged.zip", f"type: model\nx: !!python/object/apply:os.system ['touch {flag}']\n")
    line = fails_in_one_line("predict", tagged, IMAGE, "--out", tmp_path / "out", at=tmp_path)
    assert "tagged.zip: its description (rdf.yaml) cannot be read (ConstructorError" in line and not flag.exists()


def test_a_damaged_zip_is_one_line(tmp_path):
    raw = bytearray(package_zip(tmp_path / "model.zip", "type: model\n").read_bytes())
    raw[raw.index(b"PK\x01\x02")] = 0  # a damaged central directory
    (tmp_path / "model.zip").write_bytes(bytes(raw))
    line = fails_here("predict", tmp_path / "model.zip", IMAGE, "--out", tmp_path / "out", at=tmp_path)
    assert "model.zip: a damaged zip file" in line and "download or export the package again" in line


def test_a_checkpoint_whose_config_names_another_backbone_is_one_line(checkpoint, tmp_path):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["config"]["model"]["backbone"] = "resnet34_fpn"
    torch.save(state, tmp_path / "mixed.pt")
    line = fails_here("predict", tmp_path / "mixed.pt", IMAGE, "--out", tmp_path / "out", at=tmp_path)
    assert "mixed.pt: its weights do not fit the model its config describes (resnet34_fpn" in line
    line = fails_here("export-model", tmp_path / "mixed.pt", "--out", tmp_path / "m.zip", "--test-image", IMAGE,
                             at=tmp_path)
    assert "mixed.pt: its weights do not fit" in line


def test_a_5d_stack_is_told_predicts_own_flag_and_a_nan_image_what_to_do_in_fiji(checkpoint, tmp_path):
    plane = np.zeros((2, 3, 1, 64, 64), np.uint8)  # TZCYX
    tifffile.imwrite(tmp_path / "movie.tif", plane, imagej=True, metadata={"axes": "TZCYX"})
    line = fails_here("predict", checkpoint, tmp_path / "movie.tif", "--out", tmp_path / "out", at=tmp_path)
    assert "movie.tif" in line and "--projection max" in line and "pass --projection" not in line
    image = np.full((64, 64), 0.5, np.float32)
    image[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", image)
    line = fails_here("predict", checkpoint, tmp_path / "nan.tif", "--out", tmp_path / "out", at=tmp_path)
    assert "nan.tif" in line and "Remove NaNs" in line and "training" not in line


def test_exporting_a_model_that_finds_no_cell_says_so_in_the_commands_words(checkpoint, tmp_path):
    from skimage.io import imsave

    imsave(tmp_path / "blank.png", np.zeros((96, 96, 3), np.uint8))
    line = fails_here("export-model", checkpoint, "--out", tmp_path / "m.zip", "--test-image",
                             tmp_path / "blank.png", "--skip-test", at=tmp_path)
    assert "blank.png gives no cell" in line and "--test-image" in line and "pydantic" not in line.lower()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "1e30"], "--epochs"),
    (["--config", "config.yaml"], "a config is a JSON file"),
])
def test_finetune_refuses_absurd_epochs_and_a_yaml_config_in_one_line(tmp_path, args, message):
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 3\n")
    line = fails_here("finetune", SAMPLE, "--out", tmp_path / "run",
                             *[tmp_path / a if a.endswith(".yaml") else a for a in args], at=tmp_path)
    assert message in line


def test_a_bug_is_a_traceback_with_a_request_to_report_it_and_a_user_error_one_line(capsys):
    @command
    def broken(argv=None):
        return {}["missing"]

    @command
    def refused(argv=None):
        raise FileNotFoundError("a.tif: no such file; check the path")

    assert broken() == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'missing'" in err and "this is a bug in cellrcnn" in err
    assert err.strip().splitlines()[-1].endswith("traceback above.")
    assert refused() == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: a.tif: no such file; check the path"]


# --- issue 37: colliding names, tiny and huge inputs, hostile files -------------------------------------------------

def model_with_masks_by_pattern(checkpoint, path: Path) -> Path:
    """The suite's model, as if trained on one folder whose masks (``*.png``) share their images' stems."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["config"]["data"]["mask_glob"] = "*.png"
    torch.save(state, path)
    return path


def bmp_pairs(folder: Path, names=("001", "002")) -> Path:
    """The README's one-folder layout (``001.bmp`` beside its mask ``001.png``), from the sample."""
    from skimage.io import imread, imsave

    folder.mkdir(parents=True)
    for k, name in enumerate(names):
        imsave(folder / f"{name}.bmp", imread(SAMPLE / "images" / f"sample_0{k}.png")[..., :3], check_contrast=False)
        imsave(folder / f"{name}.png", imread(SAMPLE / "masks" / f"sample_0{k}.png"), check_contrast=False)
    return folder


def table(out: Path):
    import pandas as pd

    return pd.read_csv(out / "cells.csv", dtype={"image": str})


def test_masks_beside_their_images_are_not_predicted_and_same_stems_never_overwrite(checkpoint, tmp_path):
    """Issue 37 (1): the model's own layout rule (masks are ``*.png``) leaves the masks out; without one, two files
    of one folder that share a stem are refused before anything is written; files of two folders sharing a stem get
    names told apart by their folders."""
    from cellrcnn.cli import predict_main

    folder = bmp_pairs(tmp_path / "wbc")
    model = model_with_masks_by_pattern(checkpoint, tmp_path / "bypattern.pt")
    assert predict_main([str(model), str(folder), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    alone = bmp_pairs(tmp_path / "one", ("001",))
    (alone / "001.png").unlink()
    assert predict_main([str(model), str(alone / "001.bmp"), "--out", str(tmp_path / "q"), "--quiet"]) == 0
    both, one = table(tmp_path / "p"), table(tmp_path / "q")
    assert sorted(set(both["image"])) == ["001", "002"]
    assert both[both["image"] == "001"].reset_index(drop=True).equals(one)  # the image's cells, not the mask's
    assert sorted(p.name for p in (tmp_path / "p").glob("*.tif")) == ["001_cells.tif", "001_parts.tif",
                                                                       "002_cells.tif", "002_parts.tif"]
    line = fails_here("predict", checkpoint, folder, "--out", tmp_path / "r", at=tmp_path)
    assert "001.bmp and 001.png share the name 001" in line and "--image-glob" in line

    other = bmp_pairs(tmp_path / "b", ("001",))
    (other / "001.png").unlink()
    assert predict_main([str(checkpoint), str(alone / "001.bmp"), str(other / "001.bmp"), "--out",
                         str(tmp_path / "s"), "--coco", "--quiet"]) == 0
    two = table(tmp_path / "s")
    assert sorted(set(two["image"])) == ["b_001", "one_001"]
    coco = json.loads((tmp_path / "s" / "cells.json").read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == ["b/001.bmp", "one/001.bmp"]


def test_an_image_too_small_to_hold_a_cell_costs_only_itself(checkpoint, tmp_path, capsys):
    """Issue 37 (2): a 1-pixel row is one line naming it; the other images are predicted; alone, nothing is left."""
    from skimage.io import imsave

    from cellrcnn.cli import predict_main

    folder = tmp_path / "in"
    folder.mkdir()
    imsave(folder / "a_row.png", np.full((1, 100), 128, np.uint8), check_contrast=False)
    line = fails_here("predict", checkpoint, folder / "a_row.png", "--out", tmp_path / "out", at=tmp_path)
    assert "a_row.png: 1 x 100 pixels is too small to hold a cell" in line and "at least 8 pixels a side" in line
    shutil.copy(IMAGE, folder / "b_image.png")
    assert predict_main([str(checkpoint), str(folder), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "a_row.png: 1 x 100 pixels is too small" in err and "1 of 2 images could not be predicted" in err
    assert (tmp_path / "out" / "b_image_cells.tif").is_file() and not list((tmp_path / "out").glob("a_row*"))


def claiming_tiff(path: Path, side: int, compression=None) -> Path:
    """A 10 x 10 TIFF whose header then claims ``side`` x ``side`` pixels (a few hundred bytes on disk)."""
    import struct

    tifffile.imwrite(path, np.zeros((10, 10), np.uint8), compression=compression, metadata=None)
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        for name in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            raw[tags[name].valueoffset:tags[name].valueoffset + 4] = struct.pack("<I", side)
    path.write_bytes(bytes(raw))
    return path


def claiming_png(path: Path, side: int) -> Path:
    """A small PNG whose header (IHDR, its checksum right) claims ``side`` x ``side`` pixels."""
    import struct
    import zlib

    from skimage.io import imsave

    imsave(path, np.zeros((10, 10), np.uint8), check_contrast=False)
    raw = bytearray(path.read_bytes())
    start = raw.index(b"IHDR")
    raw[start + 4:start + 12] = struct.pack(">II", side, side)
    raw[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(raw[start:start + 17])))
    path.write_bytes(bytes(raw))
    return path


def test_a_header_claiming_a_huge_image_is_refused_before_anything_is_read(checkpoint, tmp_path):
    """Issue 37 (4): no allocation of what a header claims: an uncompressed TIFF is found truncated, a compressed one
    and a PNG over data.max_pixels, each in one line (no PIL warning); the limit is the user's to raise."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    claiming_tiff(tmp_path / "plain.tif", 100_000)
    claiming_tiff(tmp_path / "zipped.tif", 100_000, "zlib")
    claiming_png(tmp_path / "big.png", 100_000)
    try:  # a 10-gigapixel allocation would fail loudly under 6 GiB of address space instead of passing unnoticed
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, hard))
        plain = fails_here("predict", checkpoint, tmp_path / "plain.tif", "--out", tmp_path / "o", at=tmp_path)
        zipped = fails_here("predict", checkpoint, tmp_path / "zipped.tif", "--out", tmp_path / "o",
                            at=tmp_path)
        big = fails_here("predict", checkpoint, tmp_path / "big.png", "--out", tmp_path / "o", at=tmp_path)
        allowed = fails_here("predict", checkpoint, tmp_path / "big.png", "--out", tmp_path / "o",
                             "--max-pixels", str(10**10 + 1), at=tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert "plain.tif: truncated or damaged: its header describes 100000 x 100000 values" in plain
    for line, name in ((zipped, "zipped.tif"), (big, "big.png")):
        assert f"{name}: its header claims 100000 x 100000 pixels (10,000 megapixels), more than the 268" in line
        assert "--max-pixels" in line
    assert "big.png: cannot read the file" in allowed  # past the limit, the reader finds the file damaged


def test_a_bugs_traceback_quotes_the_code_as_it_is(capsys):
    """Issue 37 (6): the filter that puts config names in flags' terms leaves a traceback alone."""
    from cellrcnn.cli.common import Parser, setup_logging

    parser = Parser(prog="cellrcnn-test")
    parser.add_argument("--scale", type=float)
    setup_logging(parser=parser)

    @command
    def broken(argv=None):
        scale = None
        return {}.get(scale=scale)  # a TypeError whose source line names scale=scale

    try:
        assert broken() == 1
        err = capsys.readouterr().err
        logging.getLogger("cellrcnn").error("error: set scale=2")  # a message still speaks in flags
        told = capsys.readouterr().err.strip()
    finally:
        setup_logging()
    assert "return {}.get(scale=scale)" in err and "--scale" not in err
    assert told == "error: set --scale 2"


def test_an_empty_folder_is_told_predicts_own_flag(checkpoint, tmp_path):
    """Issue 37 (11): the hint named the config field data.image_glob where predict's flag is --image-glob."""
    (tmp_path / "empty").mkdir()
    line = fails_here("predict", checkpoint, tmp_path / "empty", "--out", tmp_path / "out", at=tmp_path)
    assert "empty: no images matching '*'" in line and "--image-glob" in line and "data.image_glob" not in line
