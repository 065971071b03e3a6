"""Build the part-aware Mask R-CNN and load its starting weights.

The model is torchvision's composition ``GeneralizedRCNN(backbone, rpn,
roi_heads, transform)``, built as torchvision's ``MaskRCNN`` builds it (same
modules, same state dict keys, the same starting weights for a seed), with two
parts of our own built straight from the config: the RoI heads
(:class:`~cellrcnn.roi_heads.PartRoIHeads`) and the transform, whose
``postprocess`` also pastes part labels into the image. In the default "exact"
mask geometry the RoI poolers are :class:`~cellrcnn.roi_heads.AlignedMultiScaleRoIAlign`.
"""

from __future__ import annotations

import logging
import dataclasses
import math
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import get_model_builder, get_weight
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from .compat import mobilenet_extractor, resnet_fpn_extractor
from .config import ADAPT_RECIPE, BACKBONE_TABLE, Config, ModelConfig, _field_types, parse_field_value
from .roi_heads import AlignedMultiScaleRoIAlign, PartRoIHeads

__all__ = ["build_model", "build_backbone", "resolve_device", "load_checkpoint", "model_from_checkpoint",
           "adaptation_overrides", "to_label_images", "paste_labels",
           "paste_parts_in_image", "PartRCNNTransform", "load_matching_state_dict", "resolve_norm",
           "model_config_from_run"]

logger = logging.getLogger(__name__)

# Predictors are sized for COCO's 91 classes; they always start fresh from COCO weights.
_FRESH_FROM_COCO = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.")
#: Buffers that hold settings, not learned values: never taken from starting weights.
_SETTINGS = ("roi_heads.part_weights",)
_TENSORS_OF_A_LAYER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def paste_parts_in_image(part_probs: Tensor, boxes: Tensor, image_size: tuple[int, int],
                         threshold: float = 0.5, aligned: bool = True) -> dict[str, Tensor]:
    """Paste per-RoI part probabilities into the image.

    With ``aligned=True`` (pixel-exact) each image pixel whose centre lies in or
    near a box samples the ``M x M`` map bilinearly at that centre, the inverse
    of :func:`cellrcnn.losses.project_parts_on_boxes` with ``aligned=True``:
    mask pixel ``j`` covers ``[x1 + j w / M, x1 + (j + 1) w / M]`` and the map
    is zero beyond its edge (detectron2's ``paste_masks_in_image`` geometry).
    With ``aligned=False`` it follows torchvision 0.29's ``paste_masks_in_image``
    (one-pixel padding, box expansion, integer box, bilinear resize), so the
    whole-cell probability equals torchvision's paste.

    Either way all foreground parts of a cell are pasted in one resampling, only
    over the box's own pixels. The whole-cell probability is the sum of the
    foreground parts. A pixel belongs to a cell when that probability exceeds
    ``threshold``; its label is then the most likely non-background part, so
    ``part_masks > 0`` equals ``masks > threshold``.

    Parameters
    ----------
    part_probs : Tensor
        float ``[N, K, M, M]`` part probabilities per detection.
    boxes : Tensor
        float ``[N, 4]`` boxes in image coordinates (pixel edges).
    image_size : tuple of int
        ``(H, W)``.
    threshold : float
        Whole-cell probability above which a pixel belongs to the cell.
    aligned : bool
        Pixel-exact geometry; False reproduces torchvision.

    Returns
    -------
    dict
        ``masks`` float ``[N, 1, H, W]`` whole-cell probability and
        ``part_masks`` uint8 ``[N, H, W]`` part labels ``0..K-1``.
    """
    N, H, W = part_probs.shape[0], *image_size
    masks = part_probs.new_zeros((N, 1, H, W))
    part_masks = torch.zeros((N, H, W), dtype=torch.uint8, device=part_probs.device)
    if N == 0:
        return {"masks": masks, "part_masks": part_masks}
    regions = _sample_exact if aligned else _sample_torchvision
    for i, (ys, xs), fg in regions(part_probs[:, 1:], boxes, H, W):
        cell = fg.sum(dim=0)
        masks[i, 0, ys, xs] = cell
        part_masks[i, ys, xs] = (fg.argmax(dim=0).to(torch.uint8) + 1) * (cell > threshold)
    return {"masks": masks, "part_masks": part_masks}


def paste_labels(part_probs: Tensor, boxes: Tensor, scores: Tensor, image_size: tuple[int, int],
                 threshold: float = 0.5, aligned: bool = True) -> dict[str, Tensor]:
    """Paste per-RoI part probabilities straight into one cell label image and one part label image.

    The same pixels and labels as :func:`to_label_images` applied to the output
    of :func:`paste_parts_in_image`, without the ``[N, H, W]`` stack of
    per-detection images: memory is the two label images plus one box at a
    time, whatever the number of cells. Detections are laid down by descending
    score, and a pixel claimed by several goes to the best-scoring one.

    Parameters
    ----------
    part_probs, boxes, image_size, threshold, aligned
        As in :func:`paste_parts_in_image`.
    scores : Tensor
        float ``[N]`` detection scores.

    Returns
    -------
    dict
        ``cells`` int64 ``[H, W]`` (0 background, label ``k`` the detection
        ``order[k - 1]``), ``parts`` uint8 ``[H, W]`` and ``order`` int64 ``[N]``,
        the detections by descending score.
    """
    H, W = image_size
    order = torch.argsort(scores, descending=True)
    cells = torch.zeros((H, W), dtype=torch.int64, device=part_probs.device)
    parts = torch.zeros((H, W), dtype=torch.uint8, device=part_probs.device)
    if len(order) == 0:
        return {"cells": cells, "parts": parts, "order": order}
    regions = _sample_exact if aligned else _sample_torchvision
    for rank, (ys, xs), fg in regions(part_probs[order, 1:], boxes[order], H, W):
        held, held_parts = cells[ys, xs], parts[ys, xs]  # views: written in place
        free = (fg.sum(dim=0) > threshold) & (held == 0)
        held.copy_(torch.where(free, rank + 1, held))  # no boolean indexing: no device sync per detection
        held_parts.copy_(torch.where(free, fg.argmax(dim=0).to(torch.uint8) + 1, held_parts))
    return {"cells": cells, "parts": parts, "order": order}


def _sample_exact(fg: Tensor, boxes: Tensor, H: int, W: int):
    """Yield ``(i, (rows, cols), fg [K-1, h, w])``: the maps sampled at the pixel centres around box i."""
    M = fg.shape[-1]
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        w, h = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
        # Bilinear sampling reaches half a mask pixel beyond the box; zero beyond that.
        cx0, cx1 = max(math.floor(x0 - w / (2 * M)), 0), min(math.ceil(x1 + w / (2 * M)), W)
        cy0, cy1 = max(math.floor(y0 - h / (2 * M)), 0), min(math.ceil(y1 + h / (2 * M)), H)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        # Pixel centres in grid_sample's [-1, 1] box coordinates (align_corners=False: -1 is the box edge),
        # in float32: half precision cannot tell half a pixel apart at coordinates in the thousands.
        gx = (torch.arange(cx0, cx1, device=fg.device, dtype=torch.float32) + 0.5 - x0) * (2 / w) - 1
        gy = (torch.arange(cy0, cy1, device=fg.device, dtype=torch.float32) + 0.5 - y0) * (2 / h) - 1
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]
        sampled = F.grid_sample(fg[i : i + 1].float(), grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        yield i, (slice(cy0, cy1), slice(cx0, cx1)), sampled[0]


def _sample_torchvision(fg: Tensor, boxes: Tensor, H: int, W: int):
    """As :func:`_sample_exact`, with torchvision 0.29's ``paste_mask_in_image`` geometry."""
    padded, scale = expand_masks(fg, padding=1)
    for i, (x0, y0, x1, y1) in enumerate(expand_boxes(boxes, scale).to(torch.int64).tolist()):
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1 + 1, W), min(y1 + 1, H)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        size = (max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1))
        resized = F.interpolate(padded[i : i + 1], size=size, mode="bilinear", align_corners=False)[0]
        yield i, (slice(cy0, cy1), slice(cx0, cx1)), resized[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def to_label_images(output: dict[str, Tensor], score_threshold: float = 0.5) -> dict[str, Tensor]:
    """One instance image and one part image from a model output.

    Detections scoring at least ``score_threshold`` are laid down by descending
    score; a pixel claimed by several goes to the best-scoring one.
    (:func:`predict_labels` pastes label images directly, without the
    per-detection masks.)

    Parameters
    ----------
    output : dict
        One image's output of ``model(images)`` in eval mode (``scores``,
        ``part_masks``).
    score_threshold : float
        Minimum score of a kept detection.

    Returns
    -------
    dict
        ``cells`` int64 ``[H, W]`` (0 background, 1..N by descending score),
        ``parts`` uint8 ``[H, W]`` part labels and ``kept`` int64 ``[N]``, the
        indices of the kept detections in ``output``, in label order.
    """
    order = torch.argsort(output["scores"], descending=True)
    kept = order[output["scores"][order] >= score_threshold]
    part_masks = output["part_masks"][kept]
    H, W = output["part_masks"].shape[-2:]
    if len(kept) == 0:
        empty = torch.zeros((H, W), dtype=torch.int64, device=part_masks.device)
        return {"cells": empty, "parts": empty.to(torch.uint8), "kept": kept}
    claimed = part_masks > 0
    first = claimed.to(torch.uint8).argmax(dim=0)  # the best-scoring detection claiming each pixel
    any_claim = claimed.any(dim=0)
    cells = (first + 1) * any_claim
    parts = part_masks.gather(0, first[None])[0] * any_claim
    return {"cells": cells.to(torch.int64), "parts": parts.to(torch.uint8), "kept": kept}


class PartRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's transform whose ``postprocess`` pastes cell and part masks together.

    Follows torchvision 0.29: ``super().postprocess`` rescales the boxes to the
    original image; :func:`paste_parts_in_image` then pastes ``masks`` and
    ``part_masks`` in one pass instead of torchvision's binary paste.

    With ``aligned=True`` the training targets' part masks are not resized at
    all: they keep the image's own resolution and :class:`PartRoIHeads` projects
    them with the proposals scaled back to it, so no label map is ever resampled
    by nearest neighbour. (torchvision resizes them with ``"nearest"``, which
    moves every edge by up to a pixel; even centre-aligned resizing costs 0.011
    cytoplasm Dice on the WBC cells, see docs/benchmarks.md.)
    """

    def __init__(self, *args: Any, mask_threshold: float = 0.5, aligned: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask_threshold = mask_threshold
        self.aligned = aligned

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                scale: float | None = None):
        """torchvision's transform; with ``scale`` (eval only), each image is resized by that factor instead of
        to ``min_size``: prediction at the scale the model was trained at, whatever the image size."""
        if scale is None or self.training:
            return super().forward(images, targets)
        resized = []
        for image in images:
            if image.dim() != 3:
                raise ValueError(f"images is expected to be a list of 3d tensors of shape [C, H, W], got {image.shape}")
            # torchvision's order and resize call, with the factor fixed instead of derived from min_size
            resized.append(F.interpolate(self.normalize(image)[None], scale_factor=scale, mode="bilinear",
                                         recompute_scale_factor=True, align_corners=False)[0])
        sizes = [(int(r.shape[-2]), int(r.shape[-1])) for r in resized]
        return ImageList(self.batch_images(resized, size_divisible=self.size_divisible), sizes), targets

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if not self.aligned or target is None or "masks" not in target:
            return super().resize(image, target)
        image, resized = super().resize(image, {k: v for k, v in target.items() if k != "masks"})
        resized["masks"] = target["masks"]
        return image, resized

    def _boxes_to_original(self, result, image_shapes, original_image_sizes) -> list[Tensor]:
        """Each image's ``part_probs``, taken out of ``result``, whose boxes torchvision rescales to the original
        image (its ``masks`` are dropped: they are pasted with the parts)."""
        part_probs = [r.pop("part_probs") for r in result]
        for r in result:
            del r["masks"]
        super().postprocess(result, image_shapes, original_image_sizes)
        return part_probs

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        part_probs = self._boxes_to_original(result, image_shapes, original_image_sizes)
        for r, probs, size in zip(result, part_probs, original_image_sizes):
            r.update(paste_parts_in_image(probs, r["boxes"], size, self.mask_threshold, self.aligned))
        return result

    def postprocess_labels(self, result, image_shapes, original_image_sizes):
        """As :meth:`postprocess`, but each image's detections pasted straight into ``cells`` and ``parts`` label
        images (:func:`paste_labels`, with ``order``): a tile of hundreds of cells costs two images, not hundreds."""
        part_probs = self._boxes_to_original(result, image_shapes, original_image_sizes)
        for r, probs, size in zip(result, part_probs, original_image_sizes):
            r.update(paste_labels(probs, r["boxes"], r["scores"], size, self.mask_threshold, self.aligned))
        return result


@torch.no_grad()
def predict_labels(model: nn.Module, images: list[Tensor], scale: float | None,
                   score_threshold: float) -> list[dict[str, Tensor]]:
    """Detections of each image pasted into label images: the prediction path, with its settings as arguments.

    ``model(images)`` is left as torchvision's (per-detection masks); this runs
    the same stages (transform, backbone, RPN, RoI heads, postprocess) with the
    settings given instead of any left on the model.

    Parameters
    ----------
    model : torch.nn.Module
        A model from :func:`build_model` (or its DistributedDataParallel
        wrapper), in eval mode.
    images : list of Tensor
        float ``[3, H, W]`` images, values 0..1.
    scale : float or None
        Resize factor from image to network pixels; None resizes each image
        to ``min_size`` as in training.
    score_threshold : float
        Detections scoring at most this are dropped before their masks are
        predicted.

    Returns
    -------
    list of dict
        Per image: ``boxes``, ``labels``, ``scores`` of the detections (the
        RoI heads' order), ``cells`` int64 ``[H, W]`` (label ``k`` is detection
        ``order[k - 1]``), ``parts`` uint8 ``[H, W]`` and ``order`` int64 ``[N]``
        (the detections by descending score).
    """
    model = getattr(model, "module", model)
    if model.training:
        raise ValueError("predict_labels needs the model in eval mode (model.eval())")
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    batch, _ = model.transform(images, scale=scale)
    features = model.backbone(batch.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    proposals, _ = model.rpn(batch, features)
    detections, _ = model.roi_heads(features, proposals, batch.image_sizes, score_threshold=score_threshold)
    return model.transform.postprocess_labels(detections, batch.image_sizes, sizes)


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

    For a :class:`~cellrcnn.train.Trainer` subclass that builds another detector on
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


def _init_predictors(roi_heads: PartRoIHeads) -> None:
    """Small normal weights and zero bias (detectron2's choice), so every loss starts near chance."""
    box, logits = roi_heads.box_predictor, roi_heads.mask_predictor.mask_fcn_logits
    for layer, std in ((box.cls_score, 0.01), (box.bbox_pred, 0.001), (logits, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)


#: Width of the box head's output, torchvision's.
REPRESENTATION = 1024


def build_model(config: ModelConfig, load_weights: bool = True) -> GeneralizedRCNN:
    """Build a part-aware Mask R-CNN from ``config``.

    Parameters
    ----------
    config : ModelConfig
        The model section of the run's config.
    load_weights : bool
        Load the starting weights that ``config.weights`` names. False builds the
        same architecture (normalisation and frozen stages follow
        ``config.weights`` either way) without fetching or reading anything: for
        loading a checkpoint into it. With a weights file and ``norm="auto"``,
        only the file says which normalisation it needs; pass a config from
        :func:`resolve_norm` (checkpoints record one).

    Returns
    -------
    torchvision.models.detection.generalized_rcnn.GeneralizedRCNN
        ``GeneralizedRCNN(backbone, rpn, roi_heads, transform)``, the
        composition torchvision's ``MaskRCNN`` builds (same modules and state
        dict keys), with :class:`PartRoIHeads` built from ``config`` and
        :class:`PartRCNNTransform`. In training
        mode ``model(images, targets)`` returns torchvision's loss dict, with
        ``loss_mask`` the weighted part loss. In eval mode each image's dict holds
        ``boxes``, ``labels``, ``scores``, ``masks`` (float ``[N, 1, H, W]``
        whole-cell probability) and ``part_masks`` (uint8 ``[N, H, W]``).
    """
    state = None
    if load_weights and config.weights not in ("coco", "imagenet", "none"):
        state = read_state_dict(config.weights)
        config = resolve_norm(config, state)
    backbone, extra = build_backbone(config, load_weights)
    c = backbone.out_channels
    aligned = config.mask_alignment == "exact"
    pool = AlignedMultiScaleRoIAlign if aligned else MultiScaleRoIAlign
    levels = ["0", "1", "2", "3"]
    mask_channels = config.num_parts * (config.num_classes if config.class_specific_parts else 1)
    # Modules with weights are made in torchvision MaskRCNN's order, so a seed gives the same starting weights.
    box_predictor = FastRCNNPredictor(REPRESENTATION, config.num_classes + 1)
    mask_head = MaskRCNNHeads(c, [256, 256, 256, 256], 1, norm_layer=_norm_layers(config)[1])
    mask_predictor = MaskRCNNPredictor(c, 256, mask_channels)  # the head pools at M/2, the predictor upsamples 2x
    anchors = extra.get("rpn_anchor_generator")
    if anchors is None:
        anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    rpn_head = extra.get("rpn_head")
    if rpn_head is None:
        rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0])
    # torchvision's FasterRCNN defaults, with the sampling from the config
    rpn = RegionProposalNetwork(anchors, rpn_head, fg_iou_thresh=0.7, bg_iou_thresh=0.3,
                                batch_size_per_image=config.rpn_batch_size_per_image, positive_fraction=0.5,
                                pre_nms_top_n={"training": 2000, "testing": 1000},
                                post_nms_top_n={"training": 2000, "testing": 1000}, nms_thresh=0.7,
                                score_thresh=extra.get("rpn_score_thresh", 0.0))
    box_roi_pool = pool(levels, 7, 2)
    box_head = extra.get("box_head")
    if box_head is None:
        box_head = TwoMLPHead(c * 7 ** 2, REPRESENTATION)
    roi_heads = PartRoIHeads(
        num_parts=config.num_parts, part_weights=config.part_weight_vector, aligned=aligned,
        box_roi_pool=box_roi_pool, box_head=box_head, box_predictor=box_predictor,
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=config.box_batch_size_per_image,
        positive_fraction=0.25, bbox_reg_weights=None, score_thresh=config.box_score_thresh, nms_thresh=0.5,
        detections_per_img=config.box_detections_per_img,
        mask_roi_pool=pool(levels, config.mask_size // 2, 2), mask_head=mask_head, mask_predictor=mask_predictor)
    transform = PartRCNNTransform(config.min_size, config.max_size, list(config.image_mean), list(config.image_std),
                                  mask_threshold=config.mask_threshold, aligned=aligned)
    model = GeneralizedRCNN(backbone, rpn, roi_heads, transform)
    if config.predictor_init == "chance":
        _init_predictors(model.roi_heads)
    if load_weights and config.weights == "coco":
        weights = get_weight(BACKBONE_TABLE[config.backbone][2])
        state = _with_download_hint(weights.get_state_dict, weights, progress=True, check_hash=True)
        load_matching_state_dict(model, state, skip_prefixes=_FRESH_FROM_COCO, source=f"COCO ({weights})")
    elif state is not None:
        load_matching_state_dict(model, state, source=config.weights)
    logger.debug("built %s: %s norm, %s mask geometry, %dx%d part masks, %s predictor init", config.backbone,
                 config.norm_kind, config.mask_alignment, config.mask_size, config.mask_size, config.predictor_init)
    return model


def resolve_device(name: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when a CUDA device is present, else ``"cpu"``; asking for CUDA
    without one is a ValueError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available; set train.device='auto' or 'cpu'")
    return str(name)


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


def _reason(err: Exception) -> str:
    """One line saying why a file could not be read."""
    if isinstance(err, pickle.UnpicklingError):  # torch's message is a page; its one telling line names the type
        found = [line.strip() for line in str(err).splitlines() if "but got" in line]
        return ("it holds Python objects besides tensors and plain data, which are not loaded for safety"
                + (f" ({found[0].split('but got')[-1].strip()})" if found else ""))
    return str(err).splitlines()[0] if str(err) else type(err).__name__


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
        raise ValueError(f"cannot read checkpoint {path}: {_reason(err)}") from err
    if not _is_checkpoint(state):
        raise ValueError(f"{path} is not a cellrcnn checkpoint (no model and config inside); "
                         f"a run's checkpoints are best.pt and last.pt")
    return state


def model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[GeneralizedRCNN, Config]:
    """The trained model of a checkpoint, in eval mode, with the run's whole config."""
    state = load_checkpoint(path, map_location)
    config = Config.from_saved(state["config"])
    model = build_model(config.model, load_weights=False)
    model.load_state_dict(state["model"])
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
        fields["model.part_weights"] = {k: v for k, v in start.part_weights.items() if k in parts}
    # The new images are resized so their cells reach the size the run saw; an input size given says otherwise.
    if start.cell_size is not None and not {"model.min_size", "model.max_size"} & set(given):
        fields["model.target_cell_size"] = start.cell_size
    if recipe:
        dropped = {"train.steps"} if "train.epochs" in given else set()
        if {"train.lr_step", "train.lr_gamma"} & set(given):
            dropped.add("train.lr_schedule")
        fields.update({k: v for k, v in ADAPT_RECIPE.items() if k not in dropped})
    return {k: v for k, v in fields.items() if k not in given}


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
        raise ValueError(f"cannot read weights from {path}: {_reason(err)}. Is it a PyTorch state dict "
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
