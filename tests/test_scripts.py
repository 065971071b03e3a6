"""The command-line scripts, run as a user runs them."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage.io import imread

from conftest import REPO

SAMPLE = REPO / "data" / "sample"


def run(script, *args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_bundled_sample_is_what_the_generator_writes(tmp_path):
    result = run("make_sample_data.py", tmp_path)
    assert result.returncode == 0, result.stderr
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    assert written == sorted(p.relative_to(SAMPLE) for p in SAMPLE.rglob("*.png"))
    for rel in written:
        np.testing.assert_array_equal(imread(tmp_path / rel), imread(SAMPLE / rel), err_msg=str(rel))
    masks = np.stack([imread(p) for p in sorted((SAMPLE / "masks").glob("*.png"))])
    assert set(np.unique(masks)) == {0, 1, 2}


def test_sample_generator_refuses_to_overwrite(tmp_path):
    assert run("make_sample_data.py", tmp_path, "--count", "1").returncode == 0
    again = run("make_sample_data.py", tmp_path, "--count", "1")
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_demo_trains_predicts_and_writes_its_results(tmp_path):
    out = tmp_path / "demo"
    result = run("demo.py", SAMPLE, "--out", out, "--steps", "1")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "losses.csv", "sample_00_parts.tif"]
    with tifffile.TiffFile(out / "sample_00_parts.tif") as tif:
        parts = tif.asarray()
        assert tif.imagej_metadata["Labels"] == ["background", "cytoplasm", "nucleus"]
    assert parts.dtype == np.uint8 and parts.shape == (128, 128) and parts.max() <= 2
    assert "loss_mask" in (out / "losses.csv").read_text()


@pytest.mark.parametrize("setup, message", [("nonempty", "--overwrite"), ("nomask", "no mask in")])
def test_demo_bad_input_gives_one_clear_line(tmp_path, setup, message):
    out, data = tmp_path / "out", tmp_path / "data"
    out.mkdir()
    (out / "earlier.txt").write_text("keep me")
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    (data / "images" / "a.png").write_bytes((SAMPLE / "images" / "sample_00.png").read_bytes())
    if setup == "nonempty":
        (data / "masks" / "a.png").write_bytes((SAMPLE / "masks" / "sample_00.png").read_bytes())
    result = run("demo.py", data, "--out", out)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert (out / "earlier.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
