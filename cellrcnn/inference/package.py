"""BioImage Model Zoo packages, read side: the label-image module and loading a package back.

The zoo's contract is tensors in, tensors out; Mask R-CNN returns a list of
dicts per image. :class:`CellLabels` wraps a trained model so that an image
tensor goes in and a cell label image and a part label image come out: the
architecture named in a package's ``rdf.yaml``. :func:`read_package` gives a
package's model and config back, so a model downloaded from bioimage.io runs in
cellrcnn (:meth:`cellrcnn.Predictor.from_checkpoint` accepts packages).
Writing packages is :mod:`cellrcnn.export.bioimage`.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ..config.tree import Config
from ..io.files import DataError, check_package_sizes, zip_members
from ..modeling.build import build_model
from ..modeling.transform import predict_labels
from ..modeling.weights import why_unreadable
from .selection import CellChoice, border_labels, cell_boxes, cell_sides, keeps_largest, kept_cells, nucleated

__all__ = ["CellLabels", "Package", "is_package", "read_package", "PACKAGE_SUFFIXES"]

logger = logging.getLogger(__name__)

#: How a package is given: the zip file, or the rdf.yaml of an unpacked one.
PACKAGE_SUFFIXES = (".zip", ".yaml", ".yml")

#: The module a package names for its architecture (``cellrcnn/zoo.py``): fixed, so that packages outlive
#: moves inside cellrcnn.
PACKAGE_MODULE = "cellrcnn.zoo"


class CellLabels(nn.Module):
    """A trained model as the zoo calls it: image tensor in, label tensors out.

    Parameters
    ----------
    config : dict
        The run's saved config (``Config.to_dict()``, as in ``config.json``).
    score_threshold : float
        Minimum detection score of a cell.
    largest : bool or None
        Keep only the largest complete cell: True always, False never, None as
        the model was trained (a model trained on single-cell crops keeps the
        largest cell of an image like those crops).
    max_cells : int or None
        Keep at most this many cells, the best-scoring ones.

    Notes
    -----
    ``forward(image)`` takes float32 ``[B, 3, H, W]``, the image normalised as
    cellrcnn reads it (values 0..1; the package's preprocessing does this), and
    returns ``(cells, parts)``: int32 ``[B, 1, H, W]`` cell labels (0
    background, 1..N by descending score) and uint8 ``[B, 1, H, W]`` part
    labels. Images are resized inside by the training scale, and cells are kept
    by the rule of :mod:`cellrcnn.inference.selection`, as :class:`cellrcnn.Predictor`
    does for an image that fits one tile; the labels equal its ``cells`` and
    ``parts``. The three choices are the package's ``rdf.yaml`` kwargs, so a
    user can change them there. The weights live in ``self.net``.
    """

    def __init__(self, config: Mapping[str, Any], score_threshold: float = 0.5, largest: bool | None = None,
                 max_cells: int | None = None, single_rule: str = "nucleated") -> None:
        super().__init__()
        self.config = Config.from_saved(dict(config))
        self.choice = CellChoice(score_threshold, largest, max_cells, single_rule)
        self.net = build_model(self.config.model, load_weights=False).eval()

    def train(self, mode: bool = True) -> "CellLabels":
        # Always in eval mode: the wrapped detector only predicts (its training mode wants targets).
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected an image tensor [B, 3, H, W], got shape {tuple(image.shape)}")
        cells, parts = [], []
        # prediction_scale() without overrides: the scale recorded at training (None: resize to min_size)
        for output in predict_labels(self.net, list(image.float()), self.config.model.input_scale,
                                     self.choice.score_threshold):
            cell = torch.from_numpy(self._select(output["cells"].cpu().numpy(), output["parts"].cpu().numpy(),
                                                 output["scores"][output["order"]].cpu().numpy()))
            cells.append(cell)
            parts.append(output["parts"].cpu().masked_fill(cell == 0, 0))
        return torch.stack(cells)[:, None].to(image.device), torch.stack(parts)[:, None].to(image.device)

    def _select(self, cells: np.ndarray, parts: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """int32 ``[H, W]`` labels 1..K of the cells kept, from ``cells`` (int ``[H, W]``, labels 1..N by
        descending ``scores``, float ``[N]``) and their ``parts`` (int ``[H, W]``); a detection with no pixel of
        its own gets no label."""
        counts = np.bincount(cells.ravel(), minlength=len(scores) + 1)
        present = np.flatnonzero(counts[1:] > 0) + 1
        nucleus = nucleated(cells, parts, len(scores), self.config.model.parts)
        largest = keeps_largest(self.choice, self.config.model, cells.shape, self.config.model.input_scale,
                                tiled=False, sides=cell_sides(cell_boxes(cells, len(scores)), cells.shape),
                                nucleus=nucleus)
        keep = present[kept_cells(scores[present - 1], counts[present], ~np.isin(present, border_labels(cells)),
                                  self.choice.score_threshold, largest, self.choice.max_cells,
                                  None if nucleus is None else nucleus[present - 1], self.choice.single_rule)]
        lut = np.zeros(len(scores) + 1, dtype=np.int32)
        lut[keep] = np.arange(1, len(keep) + 1)
        return lut[cells]


def is_package(path: str | os.PathLike) -> bool:
    """True for a bioimage.io package: a zip holding ``rdf.yaml``, or a ``*.yaml`` description file."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return path.is_file()
    if path.is_dir():
        return (path / "rdf.yaml").is_file()
    return path.suffix.lower() == ".zip" and zipfile.is_zipfile(path) and _has_rdf(path)


def _has_rdf(path: Path) -> bool:
    return any(Path(name).name in ("rdf.yaml", "bioimageio.yaml") for name, _ in zip_members(path))


def _spec():
    try:
        import bioimageio.spec as spec
    except ImportError as err:
        raise ImportError("reading bioimage.io packages needs bioimageio.spec; "
                          "install it with: pip install 'cellrcnn[bioimageio]'") from err
    return spec


@dataclass
class Package:
    """What a cellrcnn package holds, read back (:func:`read_package`).

    Attributes
    ----------
    state : dict
        The model's state dict (keys as in :func:`cellrcnn.build_model`'s model).
    config : Config
        The run's config.
    choice : CellChoice
        The cells the package keeps (its ``rdf.yaml`` kwargs).
    """

    state: dict[str, Tensor]
    config: Config
    choice: CellChoice


def read_package(path: str | os.PathLike) -> Package:
    """The model weights, run config and choice of cells of a bioimage.io package written by cellrcnn.

    Parameters
    ----------
    path : path
        The package zip, its unpacked folder, or its ``rdf.yaml``.

    Returns
    -------
    Package
        Its state dict, config and choice of cells.

    Raises
    ------
    DataError
        Not a valid model package, or not one of cellrcnn's (other models
        run with ``bioimageio.core``), or one holding a file larger than
        :data:`~cellrcnn.io.files.MAX_MEMBER_BYTES`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "rdf.yaml"
    check_package_sizes(path)  # before any member is unpacked
    spec = _spec()
    from bioimageio.spec.model.v0_5 import ModelDescr

    # The package is trusted no further than a checkpoint: its weights are read with weights_only below.
    try:
        descr = spec.load_description(path, perform_io_checks=False, format_version="latest")
    except Exception as err:  # ruyaml, zip and pydantic errors, each a page long: one line, the file named
        text = " ".join(str(err).split())
        raise DataError(f"{path}: its description (rdf.yaml) cannot be read ({type(err).__name__}: {text[:160]}); "
                        f"export the package again with cellrcnn-export-model") from None
    if not isinstance(descr, ModelDescr):
        errors = getattr(getattr(descr, "validation_summary", None), "errors", [])
        why = f": {errors[0].msg}" if errors else ""
        raise DataError(f"{path} is not a valid bioimage.io model package{why}")
    weights = descr.weights.pytorch_state_dict
    arch = getattr(weights, "architecture", None)
    if weights is None or getattr(arch, "import_from", None) != PACKAGE_MODULE or arch.callable != CellLabels.__name__:
        raise DataError(f"{path} is a bioimage.io model, but not one exported by cellrcnn "
                         f"(its architecture is not {PACKAGE_MODULE}.{CellLabels.__name__}); run it with bioimageio.core")
    kwargs = dict(arch.kwargs)
    try:
        config = Config.from_saved(dict(kwargs.pop("config", None) or {}))
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: the config it records is not valid ({err}); export the model again with "
                        f"cellrcnn-export-model") from None
    try:  # packages made before the choice was recorded hold only the score threshold: the rest as trained
        choice = CellChoice(**kwargs)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: its model kwargs are not valid ({err}); fix them in rdf.yaml or export the model "
                         f"again") from None
    try:
        data = io.BytesIO(weights.get_reader().read())  # checks the file's sha256 against rdf.yaml
        state = torch.load(data, map_location="cpu", weights_only=True)
    except Exception as err:  # a missing, altered or unreadable weights file; torch raises several types
        raise DataError(f"{path}: cannot read its weights ({why_unreadable(err)}); download the package again or "
                         f"export it again with cellrcnn-export-model") from None
    prefix = "net."
    return Package({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, config, choice)
