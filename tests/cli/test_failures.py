"""Every failure a user can cause is one line on stderr, exit code 2, and nothing new on disk; a bug is a traceback
with a request to report it (exit code 1). One test per case a probe of the commands found (issue 24); the cases
that need a package are in tests/export/test_share.py, an interrupted prediction in tests/inference/test_predict.py.
"""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import SAMPLE, fails_in_one_line

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
    line = fails_in_one_line("predict", tmp_path / "model.zip", IMAGE, "--out", tmp_path / "out", at=tmp_path)
    assert "model.zip: a damaged zip file" in line and "download or export the package again" in line


def test_a_checkpoint_whose_config_names_another_backbone_is_one_line(checkpoint, tmp_path):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["config"]["model"]["backbone"] = "resnet34_fpn"
    torch.save(state, tmp_path / "mixed.pt")
    line = fails_in_one_line("predict", tmp_path / "mixed.pt", IMAGE, "--out", tmp_path / "out", at=tmp_path)
    assert "mixed.pt: its weights do not fit the model its config describes (resnet34_fpn" in line
    line = fails_in_one_line("export-model", tmp_path / "mixed.pt", "--out", tmp_path / "m.zip", "--test-image", IMAGE,
                             at=tmp_path)
    assert "mixed.pt: its weights do not fit" in line


def test_a_5d_stack_is_told_predicts_own_flag_and_a_nan_image_what_to_do_in_fiji(checkpoint, tmp_path):
    plane = np.zeros((2, 3, 1, 64, 64), np.uint8)  # TZCYX
    tifffile.imwrite(tmp_path / "movie.tif", plane, imagej=True, metadata={"axes": "TZCYX"})
    line = fails_in_one_line("predict", checkpoint, tmp_path / "movie.tif", "--out", tmp_path / "out", at=tmp_path)
    assert "movie.tif" in line and "--projection max" in line and "pass --projection" not in line
    image = np.full((64, 64), 0.5, np.float32)
    image[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", image)
    line = fails_in_one_line("predict", checkpoint, tmp_path / "nan.tif", "--out", tmp_path / "out", at=tmp_path)
    assert "nan.tif" in line and "Remove NaNs" in line and "training" not in line


def test_exporting_a_model_that_finds_no_cell_says_so_in_the_commands_words(checkpoint, tmp_path):
    from skimage.io import imsave

    imsave(tmp_path / "blank.png", np.zeros((96, 96, 3), np.uint8))
    line = fails_in_one_line("export-model", checkpoint, "--out", tmp_path / "m.zip", "--test-image",
                             tmp_path / "blank.png", "--skip-test", at=tmp_path)
    assert "blank.png gives no cell" in line and "--test-image" in line and "pydantic" not in line.lower()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "1e30"], "--epochs"),
    (["--config", "config.yaml"], "a config is a JSON file"),
])
def test_finetune_refuses_absurd_epochs_and_a_yaml_config_in_one_line(tmp_path, args, message):
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 3\n")
    line = fails_in_one_line("finetune", SAMPLE, "--out", tmp_path / "run",
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
