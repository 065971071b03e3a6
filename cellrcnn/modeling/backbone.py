"""Backbones: the feature extractor of each name, its norm layers and its weights."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torchvision.models import get_model_builder, get_weight
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config.fields import BACKBONE_TABLE
from ..config.model import ModelConfig
from ..utils.compat import mobilenet_extractor, resnet_fpn_extractor
from .weights import read_state_dict

__all__ = ["build_backbone", "resolve_norm"]


#: Width of the box head's output, torchvision's.
REPRESENTATION = 1024


def resolve_norm(config: ModelConfig, state: Mapping[str, Tensor] | None = None) -> ModelConfig:
    """``config`` with ``norm`` set to the normalisation its model is built with.

    ``"auto"`` follows the weights; for a weights file it follows the file: a
    backbone saved without batch-norm statistics was trained with group norm.
    :func:`~cellrcnn.fit` records the result, so a checkpoint rebuilds the same
    layers without the starting file. ``state`` holds the tensors to look at (the
    file when already read, or the model built from it) instead of reading the file.

    Raises
    ------
    ValueError
        An explicit ``norm`` that the weights file cannot fill (group norm from a
        batch-norm file, or the other way round).
    """
    if config.weights in ("coco", "imagenet", "none"):
        return dataclasses.replace(config, norm=config.norm_kind)
    body = [name for name in (read_state_dict(config.weights) if state is None else state)
            if name.startswith("backbone.body.")]
    if not body:  # not a cellrcnn backbone: nothing to follow
        return dataclasses.replace(config, norm=config.norm_kind)
    found = "batch" if any(name.endswith("running_mean") for name in body) else "group"
    if config.norm == "auto":
        return dataclasses.replace(config, norm="group" if found == "group" else config.norm_kind)
    if (config.norm == "group") != (found == "group"):
        raise ValueError(f"{config.weights} holds a model trained with {found} norm, which norm={config.norm!r} "
                         f"cannot load; use norm='auto' to follow the file")
    return config


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (He et al. 2019), fewer where the channels do not divide (MobileNet)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _norm_layers(config: ModelConfig) -> tuple[Callable[[int], nn.Module], Callable[[int], nn.Module] | None]:
    """The backbone body's normalisation layer, and that of the FPN and RoI heads (None: none)."""
    kind = config.norm_kind
    if kind == "group":  # group norm throughout, as in "Rethinking ImageNet Pre-training"
        return _group_norm, _group_norm
    body = FrozenBatchNorm2d if kind == "frozen" else nn.BatchNorm2d
    # As torchvision: its v2 model has batch norm in the FPN and heads, v1 and MobileNet have none there.
    return body, nn.BatchNorm2d if config.backbone == "resnet50_fpn_v2" else None


def build_backbone(config: ModelConfig, load_weights: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The FPN backbone of ``config`` and the detector parts that go with it (``MaskRCNN`` keyword arguments).

    For a :class:`~cellrcnn.engine.trainer.Trainer` subclass that builds another detector on
    the same backbone (normalisation, frozen stages, ImageNet weights when asked).

    Returns
    -------
    backbone : nn.Module
        With ``out_channels``.
    extra : dict
        Anchor generator, RPN head and box head arguments where the backbone
        needs its own (MobileNet, ``resnet50_fpn_v2``); empty otherwise.
    """
    is_mobilenet = config.backbone == "mobilenet_v3_fpn"
    layers = config.trained_backbone_layers
    body_norm, head_norm = _norm_layers(config)
    builder, imagenet_name, _ = BACKBONE_TABLE[config.backbone]
    imagenet = get_weight(imagenet_name) if config.weights == "imagenet" and load_weights else None
    body = _with_download_hint(get_model_builder(builder), imagenet, weights=imagenet, norm_layer=body_norm)
    if is_mobilenet:
        backbone = mobilenet_extractor(body, True, layers, norm_layer=head_norm)
        anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
        return backbone, {"rpn_anchor_generator": anchors, "rpn_score_thresh": 0.05}
    backbone = resnet_fpn_extractor(body, layers, norm_layer=head_norm)
    if config.backbone != "resnet50_fpn_v2":
        return backbone, {}
    c = backbone.out_channels
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    return backbone, {
        "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=2),
        "box_head": FastRCNNConvFCHead((c, 7, 7), [256, 256, 256, 256], [REPRESENTATION], norm_layer=head_norm),
    }


def _with_download_hint(fn, weights, /, *args: Any, **kwargs: Any):
    """Call ``fn``; if fetching ``weights`` fails, say where to put the file by hand."""
    try:
        return fn(*args, **kwargs)
    except OSError as err:  # URLError and socket errors are OSErrors
        if weights is None:
            raise
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise RuntimeError(
            f"could not download {weights} ({err}). Without internet access, fetch {weights.url} "
            f"on another machine and save it as {target}, or pass the path of a state dict as weights."
        ) from err
