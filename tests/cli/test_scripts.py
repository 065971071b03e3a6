"""The command-line scripts, run as a user runs them."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import REPO
from skimage.io import imread

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


def test_demo_trains_a_working_model_and_writes_what_it_promises(demo_run):
    """make demo as a user runs it (default settings, about two minutes on 2 CPU cores): nucleus and cytoplasm
    Dice >= 0.80 on the held-out sample images, label TIFFs as cellrcnn-predict writes them, overlays to look at."""
    out, result = demo_run.out, demo_run.result
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"best.pt", "last.pt", "config.json", "history.csv", "curves.png", "split.csv"} <= {
        p.name for p in (out / "run").iterdir()}
    predictions = out / "predictions"
    cells = sorted(predictions.glob("*_cells.tif"))
    assert len(cells) == 3  # a quarter of the 12 sample images is held out for validation
    for path in cells:
        labels = tifffile.imread(path)
        with tifffile.TiffFile(path.with_name(path.name.replace("_cells", "_parts"))) as tif:
            parts = tif.asarray()
            assert "1=cytoplasm, 2=nucleus" in tif.imagej_metadata["Info"]
        assert labels.dtype == np.uint16 and parts.dtype == np.uint8 and labels.shape == parts.shape == (128, 128)
        np.testing.assert_array_equal(labels > 0, parts > 0)
        overlay = imread(path.with_name(path.name.replace("_cells.tif", "_overlay.png")))
        assert overlay.shape == (512, 512, 3)  # 128-px crops drawn 4 times as large, to be seen
    scores = pd.read_csv(predictions / "scores.csv")
    assert len(scores) == 3
    assert scores["cytoplasm_dice"].mean() >= 0.80 and scores["nucleus_dice"].mean() >= 0.80, scores
    assert f"{predictions}/*_overlay.png" in result.stdout
    log = result.stdout + result.stderr  # as `make demo > demo.log 2>&1` leaves it: lines, no terminal codes
    assert "\x1b" not in log and "\r" not in log and "epochs: 100%" in log


@pytest.mark.parametrize("setup, message", [("nonempty", "--overwrite"), ("nomask", "a.png: no parts mask")])
def test_demo_bad_input_gives_one_clear_line_and_writes_nothing(tmp_path, setup, message):
    out, data = tmp_path / "out", tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    (data / "images" / "a.png").write_bytes((SAMPLE / "images" / "sample_00.png").read_bytes())
    if setup == "nonempty":
        out.mkdir()
        (out / "earlier.txt").write_text("keep me")
        (data / "masks" / "a.png").write_bytes((SAMPLE / "masks" / "sample_00.png").read_bytes())
    result = run("demo.py", data, "--out", out)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert message in output and "Traceback" not in output
    if setup == "nonempty":
        assert (out / "earlier.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    else:
        assert not out.exists() or not any(out.rglob("*"))


def test_library_messages_are_told_in_the_commands_flags():
    import argparse

    from cellrcnn.cli import common as cli

    parser = cli.Parser(prog="x")
    cli.add_config_arguments(parser, cli.DATA_FLAGS)
    parser.add_argument("--largest", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--cell-diameter")
    told = [cli.in_cli_terms(m, parser) for m in (
        "a.tif: 3 planes; set data.projection='max' for the maximum projection",
        "fix data.part_values, or set data.snap_values=True to map each to the nearest",
        "has 2 channels; data.channels='0,2' asks for channel 2",
        "keeping every cell (largest=True: only the largest, largest=False: every cell); cell_diameter='auto'",
        "data.min_area: expected an integer; train.lr stays; sample_00 and image_glob are words")]
    assert told == ["a.tif: 3 planes; set --projection max for the maximum projection",
                    "fix --part-values, or set --snap-values to map each to the nearest",
                    "has 2 channels; --channels 0,2 asks for channel 2",
                    "keeping every cell (--largest: only the largest, --no-largest: every cell); --cell-diameter auto",
                    "data.min_area: expected an integer; train.lr stays; sample_00 and image_glob are words"]


@pytest.mark.parametrize("command", ["predict", "finetune", "evaluate"])
@pytest.mark.parametrize("where, message", [("file", "is a file; give a folder"),
                                            ("proc", "nothing can be written in /proc")])
def test_an_out_that_is_a_file_or_unwritable_is_one_line_before_anything_loads(tmp_path, capsys, command, where,
                                                                              message):
    from cellrcnn.cli import evaluate_main, finetune_main, predict_main

    out = tmp_path / "taken.txt" if where == "file" else Path("/proc/cellrcnn-test/out")
    if where == "file":
        out.write_text("keep me")
    args = {"predict": (predict_main, ["model.pt", "images"]), "finetune": (finetune_main, ["data"]),
            "evaluate": (evaluate_main, ["model.pt", "data"])}[command]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as stop:
        args[0]([*args[1], "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and message in err[0] and str(out) in err[0]
    assert sorted(tmp_path.rglob("*")) == before and (where != "file" or out.read_text() == "keep me")
