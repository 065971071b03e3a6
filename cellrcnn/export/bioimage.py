"""Sharing a trained model as a BioImage Model Zoo (bioimage.io) package.

:func:`export_model` writes one zip: ``rdf.yaml`` in the current model spec
(built with ``bioimageio.spec``, never by hand), the weights as a PyTorch state
dict of :class:`cellrcnn.zoo.CellLabels`, a documentation file with a
"Validation" section, a cover image, and a test image with the labels cellrcnn
predicts for it. ``bioimageio.core`` checks the package by running the test
image through the weights and comparing with those labels.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..config.tree import Config
from ..inference.package import PACKAGE_MODULE, CellLabels
from ..inference.predictor import Predictor
from ..inference.selection import CROP_LIKE, CellChoice
from ..io.files import DataError, read_raw_axes
from ..io.intensity import _pixels, three_channels
from ..io.layouts import select_channels
from ..modeling.checkpoint import load_checkpoint, load_model_state, run_checkpoint
from ..utils.files import atomic_write
from .files import overlay_rgb

__all__ = ["PackageInfo", "export_model", "check_package", "input_pixels", "MASK_RCNN_DOI"]

logger = logging.getLogger(__name__)

#: He, Gkioxari, Dollár, Girshick (2017), Mask R-CNN, ICCV.
MASK_RCNN_DOI = "10.1109/ICCV.2017.322"
MASK_RCNN_TEXT = "He K, Gkioxari G, Dollár P, Girshick R. Mask R-CNN. ICCV 2017"
#: Largest side of the test image put in a package (image pixels): the zoo runs it in its test, on any machine.
TEST_IMAGE_SIDE = 256
#: The input's side must be a multiple of this (and at least 4 of them) in the package's interface.
SIZE_STEP = 16


@dataclass(frozen=True)
class PackageInfo:
    """What a package says about the model, beyond what the run records.

    Attributes
    ----------
    name : str
        Human-readable model name (default: the run folder's name).
    description : str
        One sentence: what the model segments, in which images.
    authors : tuple of str
        The people who trained it (default: the login name; give real names).
    license : str
        SPDX licence id of the weights; it must allow what the training data's licence asks.
    cite : tuple of (text, doi) pairs
        Papers to cite besides Mask R-CNN (the data set's, yours).
    tags : tuple of str
        Search tags on bioimage.io.
    """

    name: str | None = None
    description: str = "Whole cells with their parts (cytoplasm, nucleus) segmented by a fine-tuned Mask R-CNN"
    authors: tuple[str, ...] = ()
    license: str = "CC-BY-4.0"
    cite: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ("cellrcnn", "mask-rcnn", "instance-segmentation", "cells", "nucleus", "cytoplasm",
                             "2d", "pytorch")

    def __post_init__(self) -> None:
        for text, doi in self.cite:
            if not doi.startswith("10."):
                raise ValueError(f"citation {text!r}: give its DOI as 10.xxxx/..., got {doi!r}")


def _validation_image(run: Path) -> Path:
    """The first validation image of a run (``split.csv``), as the run recorded it."""
    split = run / "split.csv"
    if not split.is_file():
        raise FileNotFoundError(f"{run} has no split.csv to take a test image from; give one (test_image=PATH)")
    rows = pd.read_csv(split)
    if not {"image", "split"} <= set(rows.columns):
        raise ValueError(f"{split} has no image and split columns; give a test image (test_image=PATH)")
    chosen = rows[rows["split"] == "val"] if (rows["split"] == "val").any() else rows
    for recorded in chosen["image"]:
        for candidate in (Path(recorded), run / recorded, run.parent / recorded):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"the images listed in {split} are not found from here (first: {chosen['image'].iloc[0]}); "
                            f"give a test image (test_image=PATH)")


def input_pixels(path: str | os.PathLike, config: Config) -> np.ndarray:
    """The test image as the package's input gets it: ``[H, W, 3]`` in the file's own dtype.

    The run's channels are chosen (one repeated to three, two with a zero third,
    as the network gets them) and the image is cropped in its centre to at most
    :data:`TEST_IMAGE_SIDE`, to a multiple of :data:`SIZE_STEP` pixels.
    """
    raw, axes = read_raw_axes(path)
    # as the reader takes pixels before scaling them: bool as 8-bit, alpha dropped, odd types refused
    pixels = _pixels(select_channels(raw, axes, config.data.channels, config.data.projection, str(path)), str(path))
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.float32)  # the package's input is uint8 or float32 (percentile scaling)
    pixels = three_channels(pixels)
    H, W = pixels.shape[:2]
    side_h = min(H, TEST_IMAGE_SIDE) // SIZE_STEP * SIZE_STEP
    side_w = min(W, TEST_IMAGE_SIDE) // SIZE_STEP * SIZE_STEP
    if min(side_h, side_w) < 4 * SIZE_STEP:
        raise DataError(f"{path}: {H}x{W} pixels is too small for a test image; give one at least "
                        f"{4 * SIZE_STEP} pixels on each side (test_image=PATH)")
    y0, x0 = (H - side_h) // 2, (W - side_w) // 2
    return np.ascontiguousarray(pixels[y0:y0 + side_h, x0:x0 + side_w])


def _preprocessing(dtype: np.dtype, percentiles: tuple[float, float]) -> list:
    """cellrcnn's normalisation in the zoo's terms: 8-bit / 255; others per-channel percentiles, clipped."""
    from bioimageio.spec.model.v0_5 import (AxisId, ClipDescr, ClipKwargs, EnsureDtypeDescr, EnsureDtypeKwargs,
                                            ScaleLinearDescr, ScaleLinearKwargs, ScaleRangeDescr, ScaleRangeKwargs)

    # explicit float32 at both ends: otherwise the spec adds casts to the input's own dtype (uint8) around them
    to_float = EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="float32"))
    if dtype == np.uint8:
        return [to_float, ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=1 / 255, offset=0.0)), to_float]
    low, high = percentiles
    return [to_float,
            ScaleRangeDescr(kwargs=ScaleRangeKwargs(axes=[AxisId("y"), AxisId("x")], min_percentile=low,
                                                    max_percentile=high, eps=1e-6)),
            ClipDescr(kwargs=ClipKwargs(min=0.0, max=1.0)), to_float]


def _torchscript_blocker(module: torch.nn.Module) -> str:
    """Why the package holds no TorchScript weights, in a sentence for its documentation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript
            torch.jit.script(module)
    except Exception as err:  # TorchScript's frontend raises several types
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        return (f"torch.jit.script fails on the model: {first.rstrip(':')}. Tracing is no way round: it would "
                "freeze the number of cells of the example image. (TorchScript is deprecated since torch 2.14.)")
    return "the model scripts, but this version of cellrcnn does not package TorchScript weights."


def _cells_kept(choice: CellChoice, config: Config) -> str:
    """The package's choice of cells, in a sentence for its documentation."""
    one = {"largest": "the largest complete cell", "nucleated": "the largest complete cell with a nucleus",
           "score": "the best-scoring complete cell with a nucleus"}[choice.single_rule]
    if choice.largest is None:
        single = (f"it was trained on crops of one cell, so it keeps only {one} of an image no more than "
                  f"{CROP_LIKE:g} times as many cells across as the training crops (counted in its largest "
                  f"cell with a nucleus), and every cell of a larger one"
                  if config.model.single_cell else "it keeps every cell")
    else:
        single = f"it keeps only {one}" if choice.largest else "it keeps every cell"
    limit = f", at most {choice.max_cells} per image" if choice.max_cells else ""
    return (f"Cells scoring at least {choice.score_threshold:g} are kept; {single}{limit}. The choice is the "
            f"model's kwargs in `rdf.yaml` (`score_threshold`, `largest`: true, false or null for as trained, "
            f"`max_cells`, `single_rule`: largest, nucleated or score): change it there.")


def _documentation(info: PackageInfo, name: str, config: Config, state: dict, test_image: Path,
                   blocker: str, choice: CellChoice) -> str:
    history = state.get("history") or []
    # the exported checkpoint's own epoch (best.pt: the best validation; last.pt: the last epoch)
    best = next((row for row in history if row["epoch"] == state.get("epoch")), {})
    parts = ", ".join(f"{k} = {p}" for k, p in enumerate(config.model.parts))
    dice = [c for c in best if c.endswith("_dice")]
    lines = [
        f"# {name}", "", info.description.rstrip(".") + ".", "",
        f"Exported by cellrcnn {__version__}: torchvision's Mask R-CNN "
        "fine-tuned so that each detection is one whole cell and its mask labels the cell's parts.", "",
        "## Inputs and outputs", "",
        "- `image`: `[batch, channel, y, x]`, 3 channels, the image as read for training "
        f"(channels {list(config.data.channels) if config.data.channels else 'as stored'}; one channel is repeated "
        "to three, two get a zero third). 8-bit images are divided by 255; others are scaled per channel between "
        f"their {config.data.percentiles[0]} and {config.data.percentiles[1]} percentiles (the package's "
        "preprocessing does the test image's kind).",
        "- `cells`: cell labels, 0 background, 1..N one cell each by descending score.",
        f"- `parts`: part labels ({parts}).", "",
        f"Images are resized inside by the scale the model was trained at "
        f"({config.model.input_scale if config.model.input_scale else 'to min_size'}). The whole image is one pass: "
        "for a large field of view use cellrcnn, which predicts in tiles and stitches them.", "",
        _cells_kept(choice, config), "",
        "## Use it", "",
        "With cellrcnn installed (in a clone: `pip install -e '.[bioimageio]'`):", "",
        "```bash", "cellrcnn-predict model.zip images/ --out predictions/", "```", "",
        "or in Python, `cellrcnn.Predictor.from_checkpoint('model.zip')`, or with `bioimageio.core` "
        "(`bioimageio predict`).", "",
        "## Validation", "",
    ]
    if dice:
        lines += [f"Dice on the run's validation images at the exported checkpoint's epoch ({best['epoch']} of "
                  f"{history[-1]['epoch']}):", "",
                  "| " + " | ".join(dice) + " |", "|" + "---|" * len(dice),
                  "| " + " | ".join(f"{best[c]:.3f}" for c in dice) + " |", ""]
    else:
        lines += ["The run has no validation scores for the exported epoch (no validation images, or none that "
                  "epoch); evaluate it with `cellrcnn-evaluate`.", ""]
    lines += [f"The package's test image is `{test_image.name}`; its test outputs are the labels cellrcnn "
              "predicts for it, and `bioimageio test` reproduces them from the weights.", "",
              "Check the model on your own images before you rely on it: `cellrcnn-evaluate` scores predictions "
              "against your ground truth.", "",
              "## Weights", "",
              "- `pytorch_state_dict`: `cellrcnn.zoo.CellLabels` (install `cellrcnn`).",
              f"- TorchScript: not included: {blocker}", "",
              "## Training", "",
              f"- Backbone {config.model.backbone}, {config.model.mask_size}x{config.model.mask_size} part masks, "
              f"{history[-1]['epoch'] if history else '?'} epochs, learning rate {config.train.lr}, part weights "
              f"{config.model.part_weights or 'equal'}, starting weights {config.model.weights}.",
              ""]
    return "\n".join(lines)


def _cover(path: Path, image: np.ndarray, cells: np.ndarray, parts: np.ndarray, names: tuple[str, ...]) -> Path:
    """The test image beside its outlines: a 2:1 cover."""
    from skimage.io import imsave

    plain = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    imsave(path, np.concatenate([plain, overlay_rgb(image, cells, parts, names)], axis=1), check_contrast=False)
    return path


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, test_image: str | os.PathLike | None = None,
                 info: PackageInfo | None = None, choice: CellChoice | None = None, check: bool = True,
                 overwrite: bool = False) -> Path:
    """Write a trained run as a bioimage.io model package (zip).

    Parameters
    ----------
    checkpoint : path
        A run's ``best.pt`` (or ``last.pt``), or its run folder.
    out : path
        The package to write, ``*.zip``.
    test_image : path, optional
        The package's test image (default: the run's first validation image);
        cropped in its centre to at most 256 pixels.
    info : PackageInfo, optional
        Name, description, authors, licence, citations.
    choice : CellChoice, optional
        The cells the package keeps (default: score 0.5, the single-cell
        choice as the model was trained, every cell), recorded as its model's
        kwargs in ``rdf.yaml``; the test output is predicted with it.
    check : bool
        Run bioimageio.core's model test (:func:`check_package`) before the
        package is written; a package that fails it is not written.
    overwrite : bool
        Replace an existing ``out``.

    Returns
    -------
    Path
        ``out``, written atomically.

    Raises
    ------
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    ValueError, FileNotFoundError, DataError
        An unreadable checkpoint or test image, a description the spec refuses,
        or a package that fails the model test.
    """
    from bioimageio.spec import save_bioimageio_package

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"the package is a zip file: name it *.zip, got {out}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder {out.parent} does not exist; create it or write the package elsewhere")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; set overwrite=True to replace it")
    info = info or PackageInfo()
    path = run_checkpoint(checkpoint)
    state = load_checkpoint(path)
    config = Config.from_saved(state["config"])
    test_image = Path(test_image) if test_image is not None else _validation_image(path.parent)
    pixels = input_pixels(test_image, config)
    # cellrcnn's own prediction of the test image is the package's test output: the zoo's test then shows that its
    # preprocessing and the packaged module give what cellrcnn gives. Channels are already chosen in `pixels`.
    choice = choice or CellChoice()
    module = CellLabels(config.to_dict(), **choice.as_kwargs())
    load_model_state(module.net, state["model"], path, config.model.backbone)
    # The Predictor borrows the packaged network: it sets the same scale and threshold while it predicts, and keeps
    # cells by the same rule (cellrcnn.selection) as the packaged module.
    plain = dataclasses.replace(config, data=dataclasses.replace(config.data, channels=None, projection="none"))
    prediction = Predictor(module.net, plain, "cpu", choice=choice).predict(pixels, name=test_image.stem)
    if prediction.table.empty:  # the zoo's test would refuse the all-zero outputs in its own words
        raise ValueError(f"the test image {test_image} gives no cell scoring at least {choice.score_threshold:g} with "
                         f"this model, and a package needs one to be tested; choose another test image (one the "
                         f"model segments: test_image=PATH), or train the model longer")
    blocker = _torchscript_blocker(module)
    logger.info("no TorchScript weights: %s", blocker)

    with tempfile.TemporaryDirectory(prefix="cellrcnn-package-") as tmp:
        tmp = Path(tmp)
        files = {"input": tmp / "test_input.npy", "cells": tmp / "test_cells.npy", "parts": tmp / "test_parts.npy",
                 "weights": tmp / "weights.pt", "doc": tmp / "README.md", "cover": tmp / "cover.png",
                 "licence": tmp / "LICENSE.txt"}
        np.save(files["input"], pixels.transpose(2, 0, 1)[None])
        np.save(files["cells"], prediction.cells.astype(np.int32)[None, None])
        np.save(files["parts"], prediction.parts.astype(np.uint8)[None, None])
        torch.save(module.state_dict(), files["weights"])
        name = info.name or f"cellrcnn model {path.parent.name}"
        files["doc"].write_text(_documentation(info, name, config, state, test_image, blocker, choice))
        _cover(files["cover"], prediction.image, prediction.cells, prediction.parts, config.model.parts)
        files["licence"].write_text(f"The weights in this package are licensed {info.license} "
                                    f"(https://spdx.org/licenses/{info.license}.html).\n")
        descr = _describe(info, name, config, files, pixels.dtype,
                          {"config": config.to_dict(), **choice.as_kwargs()},
                          {"version": __version__, "checkpoint": path.name, "epoch": state.get("epoch")})
        written = tmp / "package.zip"
        save_bioimageio_package(descr, output_path=written)
        if check:
            summary = check_package(written)
            if summary.status != "passed":
                failed = [d for d in summary.details if d.status == "failed"]
                why = "; ".join(f"{d.name}: {e.msg}" for d in failed[:1] for e in d.errors[:1]) or summary.status
                raise ValueError(f"the package for {path} fails bioimageio.core's model test ({why}); "
                                 f"nothing was written")
            logger.info("bioimageio.core's model test passed")
        atomic_write(out, lambda dest: shutil.copyfile(written, dest), overwrite=overwrite)
    logger.info("wrote %s", out)
    return out


def _describe(info: PackageInfo, name: str, config: Config, files: dict[str, Path], dtype: np.dtype,
              kwargs: dict, provenance: dict):
    """The package's ``ModelDescr`` (bioimage.io model spec 0.5), from the files already written."""
    from bioimageio.spec.model import v0_5 as spec

    y, x = spec.AxisId("y"), spec.AxisId("x")
    size = spec.ParameterizedSize(min=4 * SIZE_STEP, step=SIZE_STEP)
    # the pixel size of the training images, where known: consumers (deepImageJ, QuPath) resize to it
    physical = {"unit": "micrometer", "scale": config.model.pixel_size} if config.model.pixel_size else {}
    image = spec.InputTensorDescr(
        id=spec.TensorId("image"),
        description="The image, 3 channels as the network gets them (see the documentation)",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in ("c0", "c1", "c2")]),
              spec.SpaceInputAxis(id=y, size=size, **physical), spec.SpaceInputAxis(id=x, size=size, **physical)],
        test_tensor=spec.FileDescr(source=files["input"]),
        data=spec.IntervalOrRatioDataDescr(type="uint8" if dtype == np.uint8 else "float32"),
        preprocessing=_preprocessing(dtype, config.data.percentiles))

    def labels(tensor: str, description: str, data):
        same = [spec.SpaceOutputAxis(id=a, size=spec.SizeReference(tensor_id=spec.TensorId("image"), axis_id=a),
                                     **physical) for a in (y, x)]
        return spec.OutputTensorDescr(
            id=spec.TensorId(tensor), description=description, data=data,
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(tensor)]), *same],
            test_tensor=spec.FileDescr(source=files[tensor]))

    parts = config.model.parts
    outputs = [labels("cells", "Cell labels: 0 background, 1..N one whole cell each, by descending score",
                      spec.IntervalOrRatioDataDescr(type="int32")),
               labels("parts", "Part labels: " + ", ".join(f"{k} {p}" for k, p in enumerate(parts)),
                      spec.NominalOrOrdinalDataDescr(values=list(range(len(parts))), type="uint8"))]
    weights = spec.WeightsDescr(pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
        source=files["weights"], pytorch_version=spec.Version(torch.__version__.split("+")[0]),
        architecture=spec.ArchitectureFromLibraryDescr(callable=spec.Identifier(CellLabels.__name__),
                                                       import_from=PACKAGE_MODULE, kwargs=kwargs)))
    cite = [(MASK_RCNN_TEXT, MASK_RCNN_DOI), *info.cite]
    authors = info.authors or (getpass.getuser(),)
    if not info.authors:
        logger.warning("the package names its author %r (the login name); give real names (author=NAME)", authors[0])
    try:
        return spec.ModelDescr(
            name=name, description=info.description, authors=[spec.Author(name=a) for a in authors],
            cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in cite], license=info.license,
            documentation=spec.FileDescr(source=files["doc"]), covers=[spec.FileDescr(source=files["cover"])],
            attachments=[spec.FileDescr(source=files["licence"])], tags=list(info.tags), version="0.1.0",
            inputs=[image], outputs=outputs, weights=weights,
            config=spec.Config(bioimageio=spec.BioimageioConfig(
                architecture_type="Mask R-CNN", task="instance segmentation", target_structure=["cells", *parts[1:]]),
                cellrcnn=provenance))
    except ValueError as err:  # pydantic's ValidationError: the first problem, in one line
        lines = [line.strip() for line in str(err).splitlines()[1:3]]
        raise ValueError(f"the package description is not valid: {' '.join(lines)}") from None


def check_package(path: str | os.PathLike) -> "object":
    """Run ``bioimageio.core``'s model test on a package: format validation, then the test image to its test labels.

    Returns
    -------
    bioimageio.spec.ValidationSummary
        ``.status`` is ``"passed"`` when every check holds; ``.display()`` shows them.
    """
    from bioimageio.core import test_model

    return test_model(Path(path))
