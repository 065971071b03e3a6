"""RoI heads whose mask branch predicts cell parts instead of a binary mask."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads

from .losses import part_mask_loss

__all__ = ["PartRoIHeads", "select_class_parts", "part_inference"]


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

    Training adds ``loss_mask`` (see :func:`cellrcnn.losses.part_mask_loss`).
    At inference each detection gets ``masks`` ``[N, 1, M, M]``, the whole-cell
    probability (1 - background), as torchvision consumers expect, and
    ``part_probs`` ``[N, K, M, M]``; the transform pastes both into the image.

    Parameters
    ----------
    num_parts : int
        K, background included.
    part_weights : sequence of float
        Loss weight of each part.
    **kwargs
        Everything ``RoIHeads`` takes, the three ``mask_*`` modules included.
    """

    def __init__(self, *, num_parts: int, part_weights, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.mask_roi_pool is None or self.mask_head is None or self.mask_predictor is None:
            raise ValueError("PartRoIHeads needs mask_roi_pool, mask_head and mask_predictor")
        self.num_parts = num_parts
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
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            _check_part_targets(targets)
        result, losses = super().forward(features, proposals, image_shapes, targets)

        if self.training:
            sampled, self._sampled = self._sampled, None
            proposals, matched_idxs, labels = sampled
            positive = [torch.where(lab > 0)[0] for lab in labels]
            mask_proposals = [p[pos] for p, pos in zip(proposals, positive)]
            matched = [m[pos] for m, pos in zip(matched_idxs, positive)]
            mask_labels = torch.cat([t["labels"][m] for t, m in zip(targets, matched)])
        else:
            mask_proposals = [r["boxes"] for r in result]
            mask_labels = torch.cat([r["labels"] for r in result])

        features_ = self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes))
        part_logits = select_class_parts(self.mask_predictor(features_), mask_labels, self.num_parts)

        if self.training:
            gt_masks = [t["masks"] for t in targets]
            losses["loss_mask"] = part_mask_loss(part_logits, mask_proposals, gt_masks, matched, self.part_weights)
        else:
            probs = part_inference(part_logits, [len(p) for p in mask_proposals])
            for r, p in zip(result, probs):
                r["part_probs"] = p
                r["masks"] = 1.0 - p[:, :1]
        return result, losses


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
