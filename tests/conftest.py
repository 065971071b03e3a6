"""Shared fixtures: tiny models and synthetic targets that run in seconds on a CPU."""

import contextlib
import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

import cellrcnn
from cellrcnn import Config, DataConfig, ModelConfig, TrainConfig
from cellrcnn.data.targets import whole_cell_targets
from cellrcnn.sample_data.sample import synthetic_sample

# Fuzzing (tests/test_fuzz.py): a few dozen inputs per reader, the same on every run; --hypothesis-profile=thorough
# for thousands with fresh seeds (docs/reliability.md).
settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile("ci")

# Qt without a display, for the napari widget tests (read when the QApplication is made, by the first test).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
WBC_DIR = REPO.parent / "shared" / "datasets" / "wbc_jtsc"
SAMPLE = REPO / "data" / "sample"


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file and folder under ``folder``, with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def fails_in_one_line(tool: str, *args, at: Path) -> str:
    """Run ``cellrcnn-<tool> args`` and check what every failure a user causes must do: exit code 2, one line on
    stderr, nothing new or changed under ``at``. Return that line."""
    before = files_under(at)
    result = subprocess.run([str(Path(sys.executable).parent / f"cellrcnn-{tool}"), *map(str, args)],
                            capture_output=True, text=True, timeout=600)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    assert files_under(at) == before  # nothing new, nothing changed
    return lines[0]


def run_command(tool: str, *args) -> SimpleNamespace:
    """``cellrcnn-<tool> args`` through the command's entry point (the console script and ``scripts/<tool>.py`` call
    the same function) in this process, sparing the seconds a new interpreter takes to import torch: its exit code
    (``returncode``) and what it wrote on ``stdout`` and ``stderr``."""
    from cellrcnn import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = getattr(cli, f"{tool.replace('-', '_')}_main")([str(a) for a in args])
        except SystemExit as stop:  # the parser's own errors
            code = stop.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def fails_here(tool: str, *args, at: Path) -> str:
    """:func:`fails_in_one_line` in this process, through the command's own entry point (:func:`run_command`),
    without the seconds a new interpreter costs to import torch."""
    before = files_under(at)
    result = run_command(tool, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    assert files_under(at) == before  # nothing new, nothing changed
    return lines[0]


def pytest_addoption(parser):
    parser.addoption("--single-cell-seed", type=int, default=0,
                     help="train the single-cell fixture with this seed: its model-level tests must hold for any "
                          "(issue 44: tried with 0, 1 and 2)")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_wbc = pytest.mark.skip(reason=f"WBC data not found at {WBC_DIR}")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "wbc" in item.keywords and not WBC_DIR.is_dir():
            item.add_marker(skip_wbc)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> SimpleNamespace:
    """``scripts/demo.py`` as ``make demo`` runs it (25 epochs on the sample, about two minutes on 2 CPU cores):
    ``out`` (its results folder) and ``result`` (the finished process). Its model is the suite's one that has
    learned nuclei (``out / "run" / "best.pt"``)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), str(SAMPLE), "--out", str(out),
                             "--device", "cpu"], capture_output=True, text=True, timeout=1200)
    return SimpleNamespace(out=out, result=result)


@pytest.fixture(scope="session")
def checkpoint(demo_run):
    """The demo's model (best.pt of ``make demo``'s run): the suite trains on the sample once, and every test
    that needs a trained model reads that one, as a user's notebook reads the demo's."""
    path = demo_run.out / "run" / "best.pt"
    assert demo_run.result.returncode == 0 and path.is_file(), demo_run.result.stdout + demo_run.result.stderr
    return path


@pytest.fixture(scope="session")
def single_cell_checkpoint(checkpoint, tmp_path_factory, pytestconfig):
    """The sample model fine-tuned for one epoch on 64 px crops of the sample, one labelled cell each (the
    neighbours a crop cuts into stay in the image, unlabelled), so that its run records ``single_cell``; it
    still finds every cell of a whole sample image (best.pt of its run)."""
    from cellrcnn.sample_data.crops import write_single_cell_crops

    side = 64
    crops = write_single_cell_crops(SAMPLE, tmp_path_factory.mktemp("crops"), side)
    model = cellrcnn.model_config_from_run(checkpoint)
    config = Config(model=dataclasses.replace(model, min_size=side, max_size=side),
                    data=DataConfig(val_fraction=0.25),
                    train=TrainConfig(epochs=1, lr=0.001, workers=0, device="cpu", size_model=False,
                                      seed=pytestconfig.getoption("single_cell_seed")))
    out = tmp_path_factory.mktemp("single_cell_run") / "run"
    cellrcnn.fit(config, crops, out, quiet=True)
    return out / "best.pt"


@pytest.fixture
def tiny_config() -> ModelConfig:
    """A resnet18-FPN at 64 px with small sampling: a training step takes well under a second."""
    return ModelConfig(backbone="resnet18_fpn", weights="none", min_size=64, max_size=64,
                       rpn_batch_size_per_image=32, box_batch_size_per_image=32)


def to_torch_target(target: dict) -> dict:
    return {k: torch.from_numpy(v) for k, v in target.items()}


@pytest.fixture
def synthetic_batch():
    """Two synthetic images as float tensors [3, H, W] in [0, 1] with their whole-cell targets."""
    images, targets = [], []
    for seed, size in ((0, (64, 80)), (3, (64, 64))):
        sample = synthetic_sample(seed, size=size)
        images.append(torch.from_numpy(sample["image"]).permute(2, 0, 1).float() / 255)
        targets.append(to_torch_target(whole_cell_targets(sample["parts"], min_area=10)))
    assert all(len(t["boxes"]) > 0 for t in targets)
    return images, targets


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
