"""RoI heads whose mask branch predicts cell parts instead of a binary mask."""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, roi_align

from ..utils.compat import setup_scales
from .losses import part_mask_loss

__all__ = ["PartRoIHeads", "PartRPN", "AlignedMultiScaleRoIAlign", "select_class_parts", "part_inference",
           "renamed_legacy_keys", "IMAGE_KEY", "add_input_image"]

#: The key under which a part head that reads the image (``reads_image``) finds the network's input among the
#: features.
IMAGE_KEY = "image"


def add_input_image(backbone: nn.Module, args: tuple, features: dict[str, Tensor]) -> dict[str, Tensor]:
    """Forward hook of the backbone, for part heads that read the image: the normalised input batch
    ``[B, 3, H, W]`` joins the FPN levels as ``features[IMAGE_KEY]``."""
    features = OrderedDict(features)
    features[IMAGE_KEY] = args[0]
    return features


class PartRPN(RegionProposalNetwork):
    """torchvision's ``RegionProposalNetwork`` over the FPN levels only: the input image that a part head may
    read (:data:`IMAGE_KEY`) is not a level to put anchors on."""

    def forward(self, images, features: dict[str, Tensor], targets=None):
        levels = OrderedDict((k, v) for k, v in features.items() if k != IMAGE_KEY)
        return super().forward(images, levels, targets)

#: The mask branch's modules, which lived on the RoI heads before part heads were plug-ins.
_LEGACY_MODULES = ("mask_roi_pool", "mask_head", "mask_predictor")


def _new_name(key: str, prefix: str) -> str:
    for name in _LEGACY_MODULES:
        if key.startswith(f"{prefix}{name}."):
            return f"{prefix}part_head.{key[len(prefix):]}"
    return key


def renamed_legacy_keys(state: dict[str, Tensor], prefix: str = "roi_heads.") -> dict[str, Tensor]:
    """``state`` with the mask branch's names of older checkpoints and of COCO weights
    (``roi_heads.mask_head.*``) moved to the part head's (``roi_heads.part_head.mask_head.*``); other names
    as they are. ``prefix`` is the RoI heads' own name in ``state``."""
    return {_new_name(key, prefix): value for key, value in state.items()}


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` with pixel-exact sampling (``roi_align(..., aligned=True)``).

    Same FPN level assignment and output as the parent (torchvision 0.29); only
    the half-pixel convention differs: a box edge at image coordinate ``x`` is
    feature coordinate ``x * scale``, with feature pixel ``i`` centred at
    ``i + 0.5``, as in detectron2's ROIAlignV2.
    """

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio, aligned=True)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[index], self.output_size, scale, self.sampling_ratio, aligned=True)
            result[index] = pooled.to(result.dtype)  # levels may differ in dtype under autocast
        return result


def scale_boxes(boxes: Tensor, factor: float, image_shape: tuple[int, int]) -> Tensor:
    """Boxes grown (or shrunk) by ``factor`` about their centres and clipped to the image.

    Parameters
    ----------
    boxes : Tensor
        float ``[N, 4]`` xyxy boxes.
    factor : float
        Side factor, e.g. 1.2 adds a tenth of each side on every side.
    image_shape : tuple of int
        ``(H, W)`` to clip to.

    Returns
    -------
    Tensor
        float ``[N, 4]``.
    """
    if factor == 1.0:
        return boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    grown = torch.cat([centre - half, centre + half], dim=1)
    H, W = image_shape
    return torch.stack([grown[:, 0].clamp(0, W), grown[:, 1].clamp(0, H), grown[:, 2].clamp(0, W),
                        grown[:, 3].clamp(0, H)], dim=1)


def select_class_parts(mask_logits: Tensor, labels: Tensor, num_parts: int) -> Tensor:
    """Pick each RoI's part logits for its cell class.

    Parameters
    ----------
    mask_logits : Tensor
        ``[P, C*K, M, M]`` predictor output (``C = 1`` when parts are shared).
    labels : Tensor
        int64 ``[P]`` cell classes ``1..C``.
    num_parts : int
        K.

    Returns
    -------
    Tensor
        ``[P, K, M, M]``.
    """
    P, CK, M, _ = mask_logits.shape
    if CK == num_parts:
        return mask_logits
    per_class = mask_logits.view(P, CK // num_parts, num_parts, M, M)
    return per_class[torch.arange(P, device=labels.device), labels - 1]


def part_inference(part_logits: Tensor, counts: list[int]) -> list[Tensor]:
    """Softmax part probabilities split per image: ``[P, K, M, M]`` -> list of ``[N_i, K, M, M]``."""
    return list(part_logits.softmax(dim=1).split(counts, dim=0))


class PartRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` with a part-label mask branch and weighted part loss.

    Follows torchvision 0.29 ``RoIHeads.forward``. The box branch runs unchanged
    in ``super().forward``; torchvision's binary mask branch is switched off there
    (``has_mask() -> False``) and the part branch below runs instead, reusing the
    proposals that ``select_training_samples`` drew for the box loss.

    The part logits come from ``part_head``, a
    :class:`~cellrcnn.modeling.part_heads.PartHead` (``model.part_head`` picks it).
    Training adds ``loss_mask`` (see :func:`cellrcnn.modeling.losses.part_mask_loss`).
    At inference each detection gets ``masks`` ``[N, 1, M, M]``, the whole-cell
    probability (1 - background), as torchvision consumers expect, and
    ``part_probs`` ``[N, K, M, M]``; the transform pastes both into the image.
    ``M`` is the part head's resolution (``mask_size``, twice that for ``"refine"``).

    Parameters
    ----------
    num_parts : int
        K, background included.
    part_weights : sequence of float
        Loss weight of each part.
    edge_weight : float
        Extra loss weight of the pixels on a cell's outer edge (see
        :func:`cellrcnn.modeling.losses.part_mask_loss`).
    part_head : PartHead
        Boxes and features in, part logits out.
    dice_weight : float
        Weight of the soft Dice term of the part loss.
    rois_per_image : int, optional
        At most this many positive proposals of each image (a random draw) train the part head.
    box_scale : float
        At inference the part head reads each detection's box grown by this factor about its centre (clipped
        to the image), so a cell may reach past a box that is too tight; detections then carry
        ``mask_boxes``, the boxes their masks belong to. Training reads the sampled proposals as they are:
        they already come in every size around a cell's.
    aligned : bool
        Pixel-exact target projection (see :func:`cellrcnn.modeling.losses.project_parts_on_boxes`).
        The targets' masks may then have any resolution covering the whole image
        (:class:`~cellrcnn.modeling.transform.PartRCNNTransform` leaves them at the image's
        own): the proposals are scaled to them before projecting. Pair it with
        :class:`AlignedMultiScaleRoIAlign` poolers (as :func:`~cellrcnn.build_model`
        does); ``False`` with torchvision's poolers reproduces torchvision.
    **kwargs
        Everything else ``RoIHeads`` takes (its three ``mask_*`` modules are the part head's business).
    """

    def __init__(self, *, num_parts: int, part_weights, part_head: nn.Module, aligned: bool = True,
                 edge_weight: float = 0.0, dice_weight: float = 0.0, rois_per_image: Optional[int] = None,
                 box_scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.mask_roi_pool is not None or self.mask_head is not None or self.mask_predictor is not None:
            raise ValueError("PartRoIHeads takes its mask branch as part_head, not as mask_* modules")
        self.part_head = part_head
        self.edge_weight = float(edge_weight)
        self.dice_weight = float(dice_weight)
        self.rois_per_image = rois_per_image
        self.box_scale = float(box_scale)
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)
        self.num_parts = num_parts
        self.aligned = aligned
        self.register_buffer("part_weights", torch.as_tensor(part_weights, dtype=torch.float32))
        self._sampled: Optional[tuple[list[Tensor], list[Tensor], list[Tensor]]] = None

    def has_mask(self) -> bool:
        # Gates torchvision's binary mask branch in RoIHeads.forward; ours replaces it.
        return False

    def select_training_samples(self, proposals, targets):
        sampled = super().select_training_samples(proposals, targets)
        proposals, matched_idxs, labels, _ = sampled
        self._sampled = (proposals, matched_idxs, labels)  # consumed by this forward's part branch
        return sampled

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: Optional[list[dict[str, Tensor]]] = None,
        score_threshold: Optional[float] = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """torchvision's ``RoIHeads.forward``; in eval mode ``score_threshold`` also drops the detections scoring
        at most that before their masks are predicted (as a higher ``score_thresh`` would: NMS and the top
        ``detections_per_img`` keep the same detections above it)."""
        if self.training:
            _check_part_targets(targets)
        result, losses = super().forward(features, proposals, image_shapes, targets)
        if not self.training and score_threshold is not None and score_threshold > self.score_thresh:
            result = [{k: v[r["scores"] > score_threshold] for k, v in r.items()} for r in result]

        if self.training:
            sampled, self._sampled = self._sampled, None
            proposals, matched_idxs, labels = sampled
            positive = [torch.where(lab > 0)[0] for lab in labels]
            if self.rois_per_image is not None:  # a random draw: the loss is a mean over RoIs
                positive = [p[torch.randperm(len(p), device=p.device)[:self.rois_per_image]] for p in positive]
            mask_proposals = [p[pos] for p, pos in zip(proposals, positive)]
            matched = [m[pos] for m, pos in zip(matched_idxs, positive)]
            mask_labels = torch.cat([t["labels"][m] for t, m in zip(targets, matched)])
        else:
            mask_proposals = [r["boxes"] for r in result]
            mask_labels = torch.cat([r["labels"] for r in result])

        if self.box_scale != 1.0 and not self.training:
            mask_proposals = [scale_boxes(b, self.box_scale, s) for b, s in zip(mask_proposals, image_shapes)]
        part_logits = select_class_parts(self.part_head(features, mask_proposals, image_shapes), mask_labels,
                                         self.num_parts)

        if self.training:
            gt_masks = [t["masks"] for t in targets]
            if self.aligned:
                mask_proposals = [p * _to_mask_scale(m, size) for p, m, size in
                                  zip(mask_proposals, gt_masks, image_shapes)]
            losses["loss_mask"] = part_mask_loss(part_logits, mask_proposals, gt_masks, matched, self.part_weights,
                                                self.aligned, self.edge_weight, self.dice_weight)
        else:
            probs = part_inference(part_logits, [len(p) for p in mask_proposals])
            for r, p, b in zip(result, probs, mask_proposals):
                r["part_probs"] = p
                r["masks"] = 1.0 - p[:, :1]
                if self.box_scale != 1.0:
                    r["mask_boxes"] = b
        return result, losses


def _rename_legacy_keys(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    # load_state_dict's pre-hook: checkpoints saved before part heads were plug-ins load as they are
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = _new_name(key, prefix)
        if new != key:
            state_dict[new] = state_dict.pop(key)


def _to_mask_scale(masks: Tensor, image_shape: tuple[int, int]) -> Tensor:
    """``[4]`` factors taking xyxy boxes from the (resized) image to the masks' own pixel grid."""
    sy, sx = masks.shape[-2] / image_shape[0], masks.shape[-1] / image_shape[1]
    return masks.new_tensor([sx, sy, sx, sy], dtype=torch.float32)


def _check_part_targets(targets: Optional[list[dict[str, Tensor]]]) -> None:
    # Shapes only: a value check would cost a device sync per step; the dataset checks values.
    if targets is None:
        raise ValueError("targets are needed in training mode")
    for i, t in enumerate(targets):
        if "masks" not in t:
            raise ValueError(f"target {i} has no 'masks' (uint8 [N, H, W] part labels)")
        masks = t["masks"]
        if masks.dim() != 3 or masks.shape[0] != t["boxes"].shape[0]:
            raise ValueError(f"target {i}: masks must be [N, H, W] with one map per box, "
                             f"got {list(masks.shape)} for {t['boxes'].shape[0]} boxes")
