"""BioImage Model Zoo packages: export, bioimageio.core's model test, and reading a package back."""

import hashlib
import io
import os
import re
import zipfile

import numpy as np
import pytest
import tifffile
import torch
from conftest import SAMPLE, fails_here, fails_in_one_line, run_command
from skimage.io import imread, imsave

from cellrcnn import Config, DataConfig, Predictor
from cellrcnn.inference.package import CellLabels, is_package, read_package
from cellrcnn.inference.selection import CellChoice
from cellrcnn.io.files import DataError

pytest.importorskip("bioimageio.core", reason="the bioimageio extra is not installed (pip install 'cellrcnn[bioimageio]')")

from cellrcnn.export.bioimage import PackageInfo, check_package, export_model, input_pixels  # noqa: E402

INFO = PackageInfo(authors=("Ada Lovelace",), cite=(("A data set paper", "10.1000/xyz123"),))


@pytest.fixture(scope="module")
def package(checkpoint, tmp_path_factory):
    """The sample run exported (bioimageio.core's model test is run by the next test, not twice)."""
    return export_model(checkpoint, tmp_path_factory.mktemp("zoo") / "model.zip", info=INFO, check=False)


def test_the_package_passes_bioimageio_cores_model_test(package):
    summary = check_package(package)
    assert summary.status == "passed", summary.format()
    names = {d.name for d in summary.details}
    assert any("format validation" in n for n in names)
    assert any("Reproduce test outputs" in n for n in names), names


def test_the_package_holds_what_the_zoo_asks_and_cellrcnns_own_prediction(package, checkpoint):
    with zipfile.ZipFile(package) as archive:
        files = set(archive.namelist())
        readme = archive.read("README.md").decode()
        rdf = archive.read("rdf.yaml").decode()
    assert {"rdf.yaml", "weights.pt", "README.md", "cover.png", "LICENSE.txt", "test_input.npy", "test_cells.npy",
            "test_parts.npy"} <= files
    assert "## Validation" in readme and "cytoplasm_dice" in readme and "TorchScript: not included" in readme
    assert "format_version: 0.5." in rdf and "import_from: cellrcnn.zoo" in rdf and "10.1109/ICCV.2017.322" in rdf
    assert "Ada Lovelace" in rdf and "10.1000/xyz123" in rdf
    contents = read_package(package)
    state, config = contents.state, contents.config
    assert contents.choice == CellChoice()  # the default choice, recorded in rdf.yaml
    assert re.search(r"^ +score_threshold: 0.5$", rdf, re.M) and re.search(r"^ +largest:( null)?$", rdf, re.M)
    assert config.model.parts == ("background", "cytoplasm", "nucleus")
    original = torch.load(checkpoint, weights_only=True)["model"]
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)


def test_a_package_predicts_as_its_checkpoint(package, checkpoint, tmp_path):
    from_package = Predictor.from_checkpoint(package, device="cpu")
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(package).extractall(unpacked)
    from_folder = Predictor.from_checkpoint(unpacked, device="cpu")
    original = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert from_package.scale == original.scale
    found = 0
    for path in sorted((SAMPLE / "images").glob("*.png"))[:4]:
        expected = original.predict(path)
        for predictor in (from_package, from_folder):
            got = predictor.predict(path)
            np.testing.assert_array_equal(got.cells, expected.cells)
            np.testing.assert_array_equal(got.parts, expected.parts)
        found += len(expected.table)
    assert found > 0, "the comparison needs cells"


def test_the_label_module_gives_the_predictors_labels(checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    module = CellLabels(state["config"])
    module.net.load_state_dict(state["model"])
    module.train()  # stays in eval mode: it only predicts
    assert not module.training and not module.net.training
    image = imread(SAMPLE / "images" / "sample_03.png")
    expected = Predictor.from_checkpoint(checkpoint, device="cpu").predict(image)
    cells, parts = module(torch.from_numpy(image)[None].permute(0, 3, 1, 2).float() / 255)
    assert cells.shape == (1, 1, 128, 128) and cells.dtype == torch.int32 and parts.dtype == torch.uint8
    np.testing.assert_array_equal(cells[0, 0].numpy(), expected.cells)
    np.testing.assert_array_equal(parts[0, 0].numpy(), expected.parts)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        module(torch.zeros(1, 1, 64, 64))


def test_a_16_bit_two_channel_image_is_tested_with_percentile_scaling(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    rgb = imread(SAMPLE / "images" / "sample_01.png")
    stack = np.stack([rgb[..., 0], rgb[..., 2]]).astype(np.uint16) * 200 + rng.integers(0, 50, (2, 128, 128),
                                                                                        dtype=np.uint16)
    tifffile.imwrite(tmp_path / "two.tif", stack, imagej=True, metadata={"axes": "CYX"})
    pixels = input_pixels(tmp_path / "two.tif", Config())
    assert pixels.shape == (128, 128, 3) and pixels.dtype == np.float32 and not pixels[..., 2].any()
    out = export_model(checkpoint, tmp_path / "two.zip", test_image=tmp_path / "two.tif", info=INFO)
    with zipfile.ZipFile(out) as archive:
        rdf = archive.read("rdf.yaml").decode()
    assert "scale_range" in rdf and "max_percentile: 99.8" in rdf  # and the export ran the model test on it


def test_test_pixels_crop_and_refuse_small_images(tmp_path):
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((300, 410), np.uint8))
    assert input_pixels(tmp_path / "big.tif", Config()).shape == (256, 256, 3)
    tifffile.imwrite(tmp_path / "odd.tif", np.zeros((100, 90), np.uint8))
    assert input_pixels(tmp_path / "odd.tif", Config()).shape == (96, 80, 3)
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((40, 300), np.uint8))
    with pytest.raises(DataError, match="small.tif.*too small"):
        input_pixels(tmp_path / "small.tif", Config(data=DataConfig()))


def test_export_refuses_to_overwrite_and_bad_names(package, checkpoint, tmp_path):
    before = package.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="exists"):
        export_model(checkpoint, package)
    assert package.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match=r"\*\.zip"):
        export_model(checkpoint, tmp_path / "model.tar")
    with pytest.raises(ValueError, match="DOI"):
        PackageInfo(cite=(("paper", "not-a-doi"),))
    with pytest.raises(ValueError, match="not valid.*license"):
        export_model(checkpoint, tmp_path / "bad.zip", info=PackageInfo(authors=("A",), license="NO-SUCH-LICENCE"),
                     check=False)
    assert not (tmp_path / "bad.zip").exists()
    blank = tmp_path / "blank.png"
    imsave(blank, np.zeros((128, 128, 3), np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match="blank.png gives no cell .* choose another test image"):
        export_model(checkpoint, tmp_path / "empty.zip", test_image=blank, info=INFO)
    assert not (tmp_path / "empty.zip").exists()


def test_packages_are_told_apart_from_other_files(package, checkpoint, tmp_path):
    assert is_package(package) and not is_package(checkpoint)
    (tmp_path / "other.zip").write_bytes(b"PK not really")
    assert not is_package(tmp_path / "other.zip")
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as archive:
        archive.writestr("image.tif", b"")
    assert not is_package(tmp_path / "plain.zip")
    with pytest.raises(ValueError, match="cannot read checkpoint .*plain.zip"):
        Predictor.from_checkpoint(tmp_path / "plain.zip")


class Payload:
    """Pickles as a call of os.system: what a hostile weights file would hold."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return os.system, (f"touch {self.flag}",)


def test_a_package_whose_weights_hold_a_pickle_is_one_line_without_torchs_advice(package, tmp_path):
    flag = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"net.x": torch.zeros(1), "payload": Payload(flag)}, buffer)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(package) as original, zipfile.ZipFile(evil, "w") as out:
        old = hashlib.sha256(original.read("weights.pt")).hexdigest()
        new = hashlib.sha256(buffer.getvalue()).hexdigest()  # the sha256 fits: only the loader stands in the way
        for item in original.infolist():
            data = original.read(item)
            if item.filename == "weights.pt":
                data = buffer.getvalue()
            elif item.filename == "rdf.yaml":
                assert old.encode() in data
                data = data.replace(old.encode(), new.encode())
            out.writestr(item, data)
    line = fails_in_one_line("predict", evil, SAMPLE / "images" / "sample_00.png", "--out", tmp_path / "out",
                             at=tmp_path)
    assert "evil.zip: cannot read its weights (it holds Python objects besides tensors" in line
    assert "weights_only" not in line and "download the package again" in line and not flag.exists()


def test_a_package_member_that_unpacks_past_the_limit_is_refused_before_it_is_read(package, tmp_path):
    """Issue 37 (3): a 1 MB zip whose weights.pt unpacks to 600 MiB is refused from the zip's directory, in one
    line naming the member (it no longer blames a damaged download), with no memory spent on it."""
    import resource

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(package) as original, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for item in original.infolist():
            if item.filename != "weights.pt":
                out.writestr(item, original.read(item))
        with out.open("weights.pt", "w", force_zip64=True) as weights:
            chunk = bytes(2**20)
            for _ in range(600 * 2**20 // len(chunk)):
                weights.write(chunk)
    assert bomb.stat().st_size < 2 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = fails_here("predict", bomb, SAMPLE / "images" / "sample_00.png", "--out", tmp_path / "out",
                      at=tmp_path)
    assert "bomb.zip: its member weights.pt unpacks to 600 MiB, more than the 512 MiB" in line
    assert "download the package again" not in line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: far below 600 MiB


def run(*args):
    return run_command("export-model", *args)


def test_the_export_command(checkpoint, tmp_path):
    done = run(checkpoint.parent, "--out", tmp_path / "m.zip", "--author", "Grace Hopper", "--skip-test")
    assert done.returncode == 0, done.stderr + done.stdout
    assert is_package(tmp_path / "m.zip") and "wrote" in done.stdout
    again = run(checkpoint, "--out", tmp_path / "m.zip")
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    bad = run(checkpoint, "--out", tmp_path / "m.tar")
    assert bad.returncode == 2 and "must name a .zip" in bad.stderr
    missing = run(tmp_path / "nothing.pt", "--out", tmp_path / "n.zip")
    assert missing.returncode == 2 and "not found" in missing.stderr
    nowhere = run(checkpoint, "--out", tmp_path / "no" / "such" / "m.zip")
    assert nowhere.returncode == 2 and "no such folder for --out" in nowhere.stderr
    tifffile.imwrite(tmp_path / "tiny.tif", np.zeros((20, 20), np.uint8))
    tiny = run(checkpoint, "--out", tmp_path / "t.zip", "--test-image", tmp_path / "tiny.tif")
    assert tiny.returncode == 2 and "tiny.tif: 20x20 pixels is too small" in tiny.stderr
    assert "Traceback" not in tiny.stdout + tiny.stderr and not (tmp_path / "t.zip").exists()
    predicted = run_command("predict", tmp_path / "m.zip", SAMPLE / "images" / "sample_02.png", "--out",
                            tmp_path / "pred")
    assert predicted.returncode == 0, predicted.stderr + predicted.stdout
    assert (tmp_path / "pred" / "sample_02_cells.tif").is_file()


def test_a_single_cell_model_exports_and_its_package_predicts_as_its_run(single_cell_checkpoint, tmp_path):
    """Issue 30: the package keeps cells by the Predictor's rule, so bioimageio.core's test passes and the package,
    the Predictor loaded from it and the run agree, where a second cell is found."""
    from cellrcnn.modeling.checkpoint import load_checkpoint

    run = single_cell_checkpoint.parent
    assert Config.from_saved(load_checkpoint(single_cell_checkpoint)["config"]).model.single_cell is True
    test_image = SAMPLE / "images" / "sample_02.png"  # three cells, 128 px: like the 64 px crops once resized
    original = Predictor.from_checkpoint(run, device="cpu")
    assert len(original.predict(test_image, largest=False).table) > 1, "the test needs a second detection"
    # check=True: bioimageio.core's model test runs offline on the test image, and a failing package is not written
    package = export_model(single_cell_checkpoint, tmp_path / "model.zip", test_image=test_image, info=INFO)
    contents = read_package(package)
    assert contents.choice == CellChoice()  # largest None: as trained, recorded in rdf.yaml
    module = CellLabels(contents.config.to_dict(), **contents.choice.as_kwargs())
    module.net.load_state_dict(contents.state)
    from_package = Predictor.from_checkpoint(package, device="cpu")
    for path in sorted((SAMPLE / "images").glob("*.png"))[:3]:
        expected = original.predict(path)
        assert len(expected.table) == 1  # the largest complete cell
        image = imread(path)
        cells, parts = module(torch.from_numpy(image)[None].permute(0, 3, 1, 2).float() / 255)
        got = from_package.predict(path)
        for labels, want in ((cells[0, 0].numpy(), expected.cells), (got.cells, expected.cells),
                             (parts[0, 0].numpy(), expected.parts), (got.parts, expected.parts)):
            np.testing.assert_array_equal(labels, want)
    # the choice recorded is the package's: every cell, when exported so
    every = export_model(single_cell_checkpoint, tmp_path / "every.zip", test_image=test_image, info=INFO,
                         choice=CellChoice(largest=False), check=False)
    assert read_package(every).choice.largest is False
    assert len(Predictor.from_checkpoint(every, device="cpu").predict(test_image).table) > 1


@pytest.mark.parametrize("rdf, kind", [("type: model\n  - : [\n", "ScannerError"),
                                       ("type: model\nx: !!python/object/apply:os.system ['touch {flag}']\n",
                                        "ConstructorError")])
def test_a_package_whose_description_is_bad_yaml_or_carries_a_python_tag_is_one_line(tmp_path, rdf, kind):
    flag = tmp_path / "ran"
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as archive:
        archive.writestr("rdf.yaml", rdf.format(flag=flag))
    with pytest.raises(DataError, match=rf"model.zip: its description \(rdf.yaml\) cannot be read \({kind}: ") as err:
        read_package(tmp_path / "model.zip")
    assert "export the package again" in str(err.value) and "\n" not in str(err.value)
    assert not flag.exists()  # the tag did not run
    raw = bytearray((tmp_path / "model.zip").read_bytes())
    raw[raw.index(b"PK\x01\x02")] = 0  # a damaged central directory: named, not a BadZipFile traceback
    (tmp_path / "damaged.zip").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="damaged.zip: a damaged zip file"):
        is_package(tmp_path / "damaged.zip")
