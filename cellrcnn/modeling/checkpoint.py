"""Checkpoints and run folders: the model and config they hold, and adapting from a run."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ..config.fields import _field_types, parse_field_value
from ..config.model import ModelConfig
from ..config.train import ADAPT_RECIPE
from ..config.tree import Config
from .build import build_model
from .weights import _safe_load, why_unreadable

__all__ = ["load_checkpoint", "load_model_state", "model_from_checkpoint", "adaptation_overrides", "model_config_from_run"]




def _is_checkpoint(state: Any) -> bool:
    return isinstance(state, Mapping) and isinstance(state.get("model"), Mapping) and "config" in state


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`cellrcnn.fit` (``model``, ``config``, ``epoch``, ...).

    It is read with ``torch.load(weights_only=True)``: tensors and plain data
    only, so a file from elsewhere cannot run code when loaded.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not readable, or not a cellrcnn checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        state = _safe_load(path, map_location)
    except Exception as err:  # torch raises several types for a corrupt file
        raise ValueError(f"cannot read checkpoint {path}: {why_unreadable(err)}") from err
    if not _is_checkpoint(state):
        raise ValueError(f"{path} is not a cellrcnn checkpoint (no model and config inside); "
                         f"a run's checkpoints are best.pt and last.pt")
    return state


def load_model_state(model: nn.Module, weights: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     backbone: str) -> None:
    """Load a trained model's own ``weights`` into ``model`` (built from the same file's config), in place.

    Raises
    ------
    ValueError
        The weights do not fit the model their config describes: one line naming ``path``, not torch's list of keys.
    """
    try:
        model.load_state_dict(weights)
    except RuntimeError:  # torch lists every key; the user needs to know the file does not hold together
        ours, theirs = set(model.state_dict()), set(weights)
        raise ValueError(f"{path}: its weights do not fit the model its config describes ({backbone}, "
                         f"{len(ours - theirs)} layers missing, {len(theirs - ours)} not of this model, or shapes "
                         f"that differ); the file was edited or mixed up with another run's: use the run's own "
                         f"best.pt or package") from None


def model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[GeneralizedRCNN, Config]:
    """The trained model of a checkpoint, in eval mode, with the run's whole config."""
    state = load_checkpoint(path, map_location)
    config = Config.from_saved(state["config"])
    model = build_model(config.model, load_weights=False)
    load_model_state(model, state["model"], path, config.model.backbone)
    return model.to(map_location).eval(), config


def run_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file as given, or the ``best.pt`` of a run folder.

    Raises
    ------
    FileNotFoundError
        A folder without ``best.pt``.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise FileNotFoundError(f"{path} holds no best.pt; give a run folder of cellrcnn-finetune, or a checkpoint")
        path = path / "best.pt"
    return path


def model_config_from_run(run: str | os.PathLike) -> ModelConfig:
    """The model settings of a trained run, starting from its weights: for adapting it to new images.

    Parameters
    ----------
    run : path
        A run folder (its ``best.pt`` is used) or a checkpoint file.

    Returns
    -------
    ModelConfig
        The run's model section (backbone, input size, parts, mask settings,
        normalisation, the backbone stages it trained) with ``weights`` set to
        the checkpoint. Replace fields
        with :func:`dataclasses.replace`; a different number of parts or classes
        starts only the predictors fresh.
    """
    path = run_checkpoint(run)
    try:
        saved = Config.from_saved(load_checkpoint(path)["config"]).model
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    # The stages the run trained keep training: from scratch that is all of them, where a pretrained start
    # would train only the top 3 (on a new stain the low stages matter most; docs/benchmarks.md).
    return dataclasses.replace(saved, weights=str(path), trainable_backbone_layers=saved.trained_backbone_layers)


def adaptation_overrides(run: str | os.PathLike, given: Mapping[str, Any] = {}, recipe: bool = True) -> dict[str, Any]:
    """The settings that adapt a trained run to new images: what ``cellrcnn-finetune --from RUN`` applies.

    Parameters
    ----------
    run : path
        A run folder or checkpoint (see :func:`model_config_from_run`).
    given : mapping
        ``"section.field"`` settings the user gave (flags, ``--set``); none of
        them is replaced. An epoch count given drops the recipe's step count, an
        ``lr_step`` or ``lr_gamma`` its cosine, an input size its scale matching.
    recipe : bool
        Add the adaptation recipe (:data:`~cellrcnn.config.ADAPT_RECIPE`) to the
        run's model settings.

    Returns
    -------
    dict
        ``"section.field"`` to value, for :meth:`Config.from_overrides`:
        every model field of the run, ``model.target_cell_size`` (the run's
        cell size, so that cells of the new images are resized to it) and the
        recipe's training and data fields.

    Examples
    --------
    >>> overrides = adaptation_overrides("runs/wbc") | {"data.image_glob": "*.bmp", "data.mask_glob": "*.png"}
    >>> config = Config.from_overrides(overrides)
    """
    start = model_config_from_run(run)
    fields = {f"model.{f.name}": getattr(start, f.name) for f in dataclasses.fields(start)}
    if "data.class_names" in given:  # the class count follows the class names given
        del fields["model.num_classes"]
    if "model.parts" in given and "model.part_weights" not in given:  # keep the weights of parts still there
        parts = given["model.parts"]
        if isinstance(parts, str):
            parts = parse_field_value(_field_types(ModelConfig)["parts"], parts, "model.parts")
        fields["model.part_weights"] = {k: v for k, v in start.weights_by_part.items() if k in parts}
    # The new images are resized so their cells reach the size the run saw; an input size given says otherwise.
    if start.cell_size is not None and not {"model.min_size", "model.max_size"} & set(given):
        fields["model.target_cell_size"] = start.cell_size
    if recipe:
        dropped = {"train.steps"} if "train.epochs" in given else set()
        if {"train.lr_step", "train.lr_gamma"} & set(given):
            dropped.add("train.lr_schedule")
        if start.part_head != "fcn":  # "refine" already, or a head of a lab's own: kept
            dropped.add("model.part_head")
        fields.update({k: v for k, v in ADAPT_RECIPE.items() if k not in dropped})
    return {k: v for k, v in fields.items() if k not in given}
