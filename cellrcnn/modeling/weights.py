"""Reading weight files safely and loading the layers that match a model."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .heads import renamed_legacy_keys

__all__ = ["load_matching_state_dict", "why_unreadable"]

logger = logging.getLogger(__name__)


# Predictors are sized for COCO's 91 classes; they always start fresh from COCO weights.
_FRESH_FROM_COCO = ("roi_heads.box_predictor.", "roi_heads.part_head.mask_predictor.")

_TENSORS_OF_A_LAYER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

#: Buffers that hold settings, not learned values: never taken from starting weights.
_SETTINGS = ("roi_heads.part_weights",)

#: numpy's array pickling, allowed while reading checkpoints: older ones kept numpy's RNG state. The arrays'
#: contents still go through torch's restricted unpickler, so nothing else can run.
_RECONSTRUCT = getattr(np, "_core", getattr(np, "core", None)).multiarray._reconstruct
_NUMPY_ARRAY_GLOBALS = [_RECONSTRUCT, (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),  # as numpy 1.x named it
                        np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _safe_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain Python types, no code), memory-mapped."""
    with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # files of the legacy (non-zip) format cannot be memory-mapped
                raise
            return torch.load(path, map_location=map_location, weights_only=True)


def why_unreadable(err: Exception) -> str:
    """One line saying why a file could not be read, in place of torch's page of advice."""
    text = str(err)
    if any(sign in text for sign in ("failed finding central directory", "invalid load key", "not a zip",
                                     "Unsupported operand")):
        return "the file is damaged or is no torch file; save or copy it again"
    if isinstance(err, pickle.UnpicklingError):  # torch's message is a page; its one telling line names the type
        found = [line.strip() for line in text.splitlines() if "but got" in line]
        return ("it holds Python objects besides tensors and plain data, which are not loaded for safety"
                + (f" ({found[0].split('but got')[-1].strip()})" if found else ""))
    return text.splitlines()[0] if text else type(err).__name__


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The model tensors of a state dict file, or of a cellrcnn checkpoint's ``"model"`` entry, on the CPU.

    Read with ``weights_only=True``, as :func:`load_checkpoint`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass weights='coco', 'imagenet', "
                                f"'none', a run's best.pt or the path of a saved state dict")
    try:
        state = _safe_load(path)
    except Exception as err:  # torch raises several types for a corrupt file
        raise ValueError(f"cannot read weights from {path}: {why_unreadable(err)}. Is it a PyTorch state dict "
                         f"(.pt/.pth) or a cellrcnn checkpoint?") from err
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):  # a checkpoint: its model entry
        state = state["model"]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is neither a cellrcnn checkpoint nor a state dict (a mapping of parameter names to "
                         f"tensors); pass a run's best.pt, or save weights with torch.save(model.state_dict(), path)")
    return dict(state)


def load_matching_state_dict(model: nn.Module, state: Mapping[str, Tensor], skip_prefixes: tuple[str, ...] = (),
                             source: str = "state dict") -> dict[str, list[str]]:
    """Load every entry of ``state`` whose name and shape match ``model``.

    Parameters
    ----------
    model : nn.Module
        Model to load into, in place.
    state : mapping
        Parameter and buffer tensors by name.
    skip_prefixes : tuple of str
        Names starting with one of these are left as initialised.
    source : str
        Where ``state`` came from, for the log and errors.

    Returns
    -------
    dict
        ``loaded``, ``skipped`` (shape mismatch or skip prefix) and ``missing``
        (in the model, absent from ``state``) lists of names.
    """
    # Settings kept as buffers (the part loss weights) come from the config, never from the weights.
    own = {k: v for k, v in model.state_dict().items() if k not in _SETTINGS}
    state = renamed_legacy_keys(state)  # COCO weights and older checkpoints name the mask branch as torchvision
    report: dict[str, list[str]] = {"loaded": [], "skipped": [], "missing": []}
    matched = {}
    for name, value in state.items():
        if name in own and own[name].shape == value.shape and not name.startswith(skip_prefixes):
            matched[name] = value
            report["loaded"].append(name)
        elif name in own:
            report["skipped"].append(name)
    report["missing"] = [n for n in own if n not in state]
    if not matched:
        raise ValueError(f"no layer of {source} matches this model ({len(state)} entries, none with a name and "
                         f"shape of the model); were the weights saved from another backbone?")
    model.load_state_dict(matched, strict=False)
    fresh = [n for n in own if n not in matched]
    logger.info("loaded %d of %d tensors from %s; %s", len(report["loaded"]), len(own), source,
                f"left fresh: {_layers(fresh)}" if fresh else "none left fresh")
    return report


def _layers(names: list[str], shown: int = 6) -> str:
    """Tensor names as their layers (``roi_heads.box_predictor.cls_score``), the first few in full."""
    layers = list(dict.fromkeys(n.rsplit(".", 1)[0] if n.rsplit(".", 1)[-1] in _TENSORS_OF_A_LAYER else n
                                for n in names))
    more = f" and {len(layers) - shown} more layers" if len(layers) > shown else ""
    return ", ".join(layers[:shown]) + more
