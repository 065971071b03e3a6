"""Assembling the part Mask R-CNN from the model config."""

from __future__ import annotations

import logging

from torch import nn
from torchvision.models import get_weight
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from ..config.fields import BACKBONE_TABLE
from ..config.model import ModelConfig
from .backbone import REPRESENTATION, _with_download_hint, build_backbone, resolve_norm
from .heads import AlignedMultiScaleRoIAlign, PartRoIHeads, PartRPN, add_input_image
from .size_model import STYLE_LEVELS, SizeModel
from .part_heads import LEVELS, build_part_head
from .transform import PartRCNNTransform
from .weights import _FRESH_FROM_COCO, load_matching_state_dict, read_state_dict

__all__ = ["build_model"]

logger = logging.getLogger(__name__)


def _init_predictors(roi_heads: PartRoIHeads) -> None:
    """Small normal weights and zero bias (detectron2's choice), so every loss starts near chance."""
    box, logits = roi_heads.box_predictor, getattr(roi_heads.part_head, "mask_predictor", None)
    layers = [(box.cls_score, 0.01), (box.bbox_pred, 0.001)]
    if logits is not None:  # a head of a lab's own starts as it is built
        layers.append((logits.mask_fcn_logits, 0.001))
    for layer, std in layers:
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)



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
    # Modules with weights are made in torchvision MaskRCNN's order, so a seed gives the same starting weights.
    box_predictor = FastRCNNPredictor(REPRESENTATION, config.num_classes + 1)
    part_head = build_part_head(config, c)
    anchors = extra.get("rpn_anchor_generator")
    if anchors is None:
        anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    rpn_head = extra.get("rpn_head")
    if rpn_head is None:
        rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0])
    # torchvision's FasterRCNN defaults, with the sampling from the config
    rpn = PartRPN(anchors, rpn_head, fg_iou_thresh=0.7, bg_iou_thresh=0.3,
                                batch_size_per_image=config.rpn_batch_size_per_image, positive_fraction=0.5,
                                pre_nms_top_n={"training": 2000, "testing": 1000},
                                post_nms_top_n={"training": 2000, "testing": 1000}, nms_thresh=0.7,
                                score_thresh=extra.get("rpn_score_thresh", 0.0))
    box_roi_pool = pool(LEVELS, 7, 2)
    box_head = extra.get("box_head")
    if box_head is None:
        box_head = TwoMLPHead(c * 7 ** 2, REPRESENTATION)
    roi_heads = PartRoIHeads(
        num_parts=config.num_parts, part_weights=config.part_weight_vector, aligned=aligned,
        edge_weight=config.edge_weight, dice_weight=config.dice_weight, part_head=part_head,
        rois_per_image=config.part_rois_per_image, box_scale=config.part_box_scale,
        box_roi_pool=box_roi_pool, box_head=box_head, box_predictor=box_predictor,
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=config.box_batch_size_per_image,
        positive_fraction=0.25, bbox_reg_weights=None, score_thresh=config.box_score_thresh, nms_thresh=0.5,
        detections_per_img=config.box_detections_per_img)
    transform = PartRCNNTransform(config.min_size, config.max_size, list(config.image_mean), list(config.image_std),
                                  mask_threshold=config.mask_threshold, aligned=aligned)
    if getattr(part_head, "reads_image", False):
        backbone.register_forward_hook(add_input_image)
    model = GeneralizedRCNN(backbone, rpn, roi_heads, transform)
    # the cell size regressed from the image's style (cell_diameter="auto"); fitted after training, unused before
    model.size_model = SizeModel(backbone.out_channels * len(STYLE_LEVELS))
    if config.predictor_init == "chance":
        _init_predictors(model.roi_heads)
    if load_weights and config.weights == "coco":
        weights = get_weight(BACKBONE_TABLE[config.backbone][2])
        state = _with_download_hint(weights.get_state_dict, weights, progress=True, check_hash=True)
        load_matching_state_dict(model, state, skip_prefixes=_FRESH_FROM_COCO, source=f"COCO ({weights})")
    elif state is not None:
        load_matching_state_dict(model, state, source=config.weights)
    side = model.roi_heads.part_head.resolution
    logger.debug("built %s: %s norm, %s mask geometry, %s part head, %dx%d part masks, %s predictor init",
                 config.backbone, config.norm_kind, config.mask_alignment, config.part_head, side, side,
                 config.predictor_init)
    return model
