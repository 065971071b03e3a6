"""BioImage Model Zoo packages, read side: the label-image module and loading a package back.

The zoo's contract is tensors in, tensors out; Mask R-CNN returns a list of
dicts per image. :class:`CellLabels` wraps a trained model so that an image
tensor goes in and a cell label image and a part label image come out: the
architecture named in a package's ``rdf.yaml``. :func:`read_package` gives a
package's model and config back, so a model downloaded from bioimage.io runs in
cellrcnn (:meth:`cellrcnn.Predictor.from_checkpoint` accepts packages).
Writing packages is :mod:`cellrcnn.share`.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .config import Config
from .model import PartRCNNTransform, build_model, to_label_images

__all__ = ["CellLabels", "is_package", "read_package", "PACKAGE_SUFFIXES"]

logger = logging.getLogger(__name__)

#: How a package is given: the zip file, or the rdf.yaml of an unpacked one.
PACKAGE_SUFFIXES = (".zip", ".yaml", ".yml")


class CellLabels(nn.Module):
    """A trained model as the zoo calls it: image tensor in, label tensors out.

    Parameters
    ----------
    config : dict
        The run's saved config (``Config.to_dict()``, as in ``config.json``).
    score_threshold : float
        Minimum detection score of a cell.

    Notes
    -----
    ``forward(image)`` takes float32 ``[B, 3, H, W]``, the image normalised as
    cellrcnn reads it (values 0..1; the package's preprocessing does this), and
    returns ``(cells, parts)``: int32 ``[B, 1, H, W]`` cell labels (0
    background, 1..N by descending score) and uint8 ``[B, 1, H, W]`` part
    labels. Images are resized by the training scale inside, as
    :class:`cellrcnn.Predictor` does for an image that fits one tile; the labels
    equal its ``cells`` and ``parts``. The weights live in ``self.net``.
    """

    def __init__(self, config: Mapping[str, Any], score_threshold: float = 0.5) -> None:
        super().__init__()
        self.config = Config.from_saved(dict(config))
        self.score_threshold = float(score_threshold)
        self.net = build_model(self.config.model, load_weights=False).eval()
        heads = self.net.roi_heads
        heads.score_thresh = max(heads.score_thresh, self.score_threshold)
        transform = self.net.transform
        if isinstance(transform, PartRCNNTransform):
            # prediction_scale() without overrides: the scale recorded at training (None: resize to min_size)
            transform.fixed_scale = self.config.model.input_scale
            transform.labels_only = True

    def train(self, mode: bool = True) -> "CellLabels":
        # Always in eval mode: the wrapped detector only predicts (its training mode wants targets).
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected an image tensor [B, 3, H, W], got shape {tuple(image.shape)}")
        cells, parts = [], []
        for output in self.net(list(image.float())):
            labels = to_label_images(output, self.score_threshold)
            cell, part = labels["cells"], labels["parts"]
            # consecutive labels 1..N: a detection left with no pixel of its own gets no number
            present = torch.unique(torch.cat([cell.new_zeros(1), cell.flatten()]))
            cells.append(torch.searchsorted(present, cell).to(torch.int32))
            parts.append(part.masked_fill(cell == 0, 0))
        return torch.stack(cells)[:, None], torch.stack(parts)[:, None]


def is_package(path: str | os.PathLike) -> bool:
    """True for a bioimage.io package: a zip holding ``rdf.yaml``, or a ``*.yaml`` description file."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return path.is_file()
    if path.is_dir():
        return (path / "rdf.yaml").is_file()
    return path.suffix.lower() == ".zip" and zipfile.is_zipfile(path) and _has_rdf(path)


def _has_rdf(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(Path(name).name in ("rdf.yaml", "bioimageio.yaml") for name in archive.namelist())


def _spec():
    try:
        import bioimageio.spec as spec
    except ImportError as err:
        raise ImportError("reading bioimage.io packages needs bioimageio.spec; "
                          "install it with: pip install 'cellrcnn[bioimageio]'") from err
    return spec


def read_package(path: str | os.PathLike) -> tuple[dict[str, Tensor], Config]:
    """The model weights and run config of a bioimage.io package written by cellrcnn.

    Parameters
    ----------
    path : path
        The package zip, its unpacked folder, or its ``rdf.yaml``.

    Returns
    -------
    tuple
        The model's state dict (keys as in :func:`cellrcnn.build_model`'s
        model) and the run's :class:`~cellrcnn.Config`.

    Raises
    ------
    ValueError
        Not a valid model package, or not one of cellrcnn's (other models
        run with ``bioimageio.core``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "rdf.yaml"
    spec = _spec()
    from bioimageio.spec.model.v0_5 import ModelDescr

    # The package is trusted no further than a checkpoint: its weights are read with weights_only below.
    descr = spec.load_description(path, perform_io_checks=False, format_version="latest")
    if not isinstance(descr, ModelDescr):
        errors = getattr(getattr(descr, "validation_summary", None), "errors", [])
        why = f": {errors[0].msg}" if errors else ""
        raise ValueError(f"{path} is not a valid bioimage.io model package{why}")
    weights = descr.weights.pytorch_state_dict
    arch = getattr(weights, "architecture", None)
    if weights is None or getattr(arch, "import_from", None) != __name__ or arch.callable != CellLabels.__name__:
        raise ValueError(f"{path} is a bioimage.io model, but not one exported by cellrcnn "
                         f"(its architecture is not {__name__}.{CellLabels.__name__}); run it with bioimageio.core")
    config = Config.from_saved(dict(arch.kwargs["config"]))
    try:
        data = io.BytesIO(weights.get_reader().read())  # checks the file's sha256 against rdf.yaml
        state = torch.load(data, map_location="cpu", weights_only=True)
    except Exception as err:  # a missing, altered or unreadable weights file; torch raises several types
        raise ValueError(f"{path}: cannot read its weights ({err}); download the package again") from err
    prefix = "net."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, config
