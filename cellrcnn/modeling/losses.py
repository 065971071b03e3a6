"""The weighted part loss of the mask head, as pure functions.

Shapes follow torchvision's ``roi_heads.maskrcnn_loss``: ``P`` positive proposals
over the batch, ``K`` parts (background first), ``M`` the mask resolution (28 or 56).

Boxes are pixel edges: a cell covering columns 10..29 has ``x1 = 10, x2 = 30``, and
pixel ``i`` has its centre at ``i + 0.5``. With ``aligned=True`` the projection
follows that convention exactly (mask pixel ``j`` of a box covers
``[x1 + j w / M, x1 + (j + 1) w / M]``); ``aligned=False`` is torchvision's
``project_masks_on_boxes``, which samples half a pixel off.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["project_parts_on_boxes", "part_mask_loss", "edge_pixels", "soft_dice_loss", "balanced_part_weights"]

#: The highest weight :func:`balanced_part_weights` gives a rare part.
AUTO_WEIGHT_CAP = 10.0


def project_parts_on_boxes(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, num_parts: int, M: int,
                           aligned: bool = True) -> Tensor:
    """Soft part fractions of each proposal's matched cell, resampled to ``M x M``.

    Each foreground part is projected as its own binary map with ``roi_align``,
    exactly as torchvision projects a binary mask, so labels never blur into each
    other (a nucleus next to background yields no cytoplasm). Background is
    ``1 - sum(foreground)``, so the fractions of a pixel always sum to 1. Only one
    float ``N x H x W`` map exists at a time, as in torchvision.

    Parameters
    ----------
    gt_masks : Tensor
        uint8 ``[N, H, W]`` part labels ``0..K-1`` of the image's N cells.
    boxes : Tensor
        float ``[P, 4]`` proposals (xyxy, image coordinates).
    matched_idxs : Tensor
        int64 ``[P]`` index of the cell each proposal is matched to.
    num_parts : int
        K, background included.
    M : int
        Output resolution.
    aligned : bool
        Pixel-exact sampling (``roi_align(..., aligned=True)``); False reproduces
        torchvision's ``project_masks_on_boxes`` bit for bit.

    Returns
    -------
    Tensor
        float ``[P, K, M, M]`` part fractions in [0, 1].
    """
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    # One float map reused for every part: peak memory stays that of torchvision's projection.
    binary = torch.empty((gt_masks.shape[0], 1, *gt_masks.shape[1:]), dtype=rois.dtype, device=rois.device)
    foreground = []
    for k in range(1, num_parts):
        binary.copy_(gt_masks[:, None]).eq_(k)  # in place: no uint8 or bool temporary of the image size
        foreground.append(roi_align(binary, rois, (M, M), 1.0, aligned=aligned)[:, 0])
    fg = torch.stack(foreground, dim=1)
    background = (1.0 - fg.sum(dim=1, keepdim=True)).clamp_(min=0.0)
    return torch.cat([background, fg], dim=1)


def edge_pixels(target: Tensor) -> Tensor:
    """Where a projected cell meets its outside.

    Parameters
    ----------
    target : Tensor
        float ``[P, K, M, M]`` part fractions (background first), as
        :func:`project_parts_on_boxes` gives.

    Returns
    -------
    Tensor
        bool ``[P, M, M]``: True where the cell fraction ``1 - background`` varies by
        more than one half within the pixel's 3x3 neighbourhood.
    """
    cell = 1.0 - target[:, :1]
    high = F.max_pool2d(cell, 3, stride=1, padding=1)
    low = -F.max_pool2d(-cell, 3, stride=1, padding=1)
    return (high - low)[:, 0] > 0.5


def soft_dice_loss(probs: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """One minus the mean soft Dice of the foreground parts, over the whole batch of RoIs.

    Each foreground part ``k >= 1`` has one Dice over all ``P * M * M`` pixels,
    ``(2 sum p t + s) / (sum p + sum t + s)``, so a part of 2 % of the pixels counts
    as much as one of 50 % (nnU-Net's Dice term, without the background). A part
    absent from the batch scores ``s / (sum p + s)``: it is asked to be predicted
    nowhere.

    Parameters
    ----------
    probs : Tensor
        float ``[P, K, M, M]`` part probabilities (softmax over ``K``).
    target : Tensor
        float ``[P, K, M, M]`` part fractions (:func:`project_parts_on_boxes`).
    smooth : float
        ``s``, in pixels.

    Returns
    -------
    Tensor
        Scalar in [0, 1]: 0 when every foreground part is predicted exactly.
    """
    if probs.shape != target.shape:
        raise ValueError(f"probs and target must have one shape, got {list(probs.shape)} and {list(target.shape)}")
    dims = (0, 2, 3)
    fg_p, fg_t = probs[:, 1:], target[:, 1:]
    overlap = (fg_p * fg_t).sum(dims)
    dice = (2.0 * overlap + smooth) / (fg_p.sum(dims) + fg_t.sum(dims) + smooth)
    return 1.0 - dice.mean()


def balanced_part_weights(pixels: Sequence[float], cap: float = AUTO_WEIGHT_CAP) -> tuple[float, ...]:
    """Part loss weights from how often each part occurs: rare parts weigh more.

    Median-frequency balancing (Eigen and Fergus 2015) over the cell parts, that
    only raises: part ``k >= 1`` weighs ``median(f) / f_k`` clipped to ``[1, cap]``,
    with ``f`` the pixel fractions and the median over the cell parts. The
    background keeps 1, as does a common part; a part never seen gets ``cap``.

    Parameters
    ----------
    pixels : sequence of float
        ``[K]`` pixel counts (or fractions) of each part, background first, as the
        mask head sees them (inside the cells' boxes).
    cap : float
        The highest weight, >= 1.

    Returns
    -------
    tuple of float
        ``K`` weights, each in ``[1, cap]``; the first (background) is 1.
    """
    counts = np.asarray(pixels, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"pixels must be >= 0 counts of at least 2 parts, got {list(pixels)}")
    if not cap >= 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    total = counts.sum()
    if total == 0:
        return (1.0,) * len(counts)
    fractions = counts[1:] / total
    weights = np.where(fractions > 0, np.median(fractions) / np.maximum(fractions, 1e-300), cap)
    return (1.0, *(float(w) for w in np.clip(weights, 1.0, cap)))


def part_mask_loss(
    part_logits: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    mask_matched_idxs: list[Tensor],
    part_weights: Tensor,
    aligned: bool = True,
    edge_weight: float = 0.0,
    dice_weight: float = 0.0,
) -> Tensor:
    """Weighted soft cross-entropy between part logits and projected part labels, plus a soft Dice term.

    The loss of a mask pixel is ``-sum_k w_k * t_k * log p_k`` with ``t`` the
    projected part fractions and ``p = softmax(part_logits)``. It is averaged over
    all ``P * M * M`` pixels and *not* normalised by the weights, so multiplying
    the weight of a part by ``f`` multiplies the gradient from its pixels by ``f``.
    With two parts, weights (1, 1) and logits ``[0, x]`` it equals torchvision's
    binary ``maskrcnn_loss`` on ``x``.

    Parameters
    ----------
    part_logits : Tensor
        float ``[P, K, M, M]`` logits of each positive proposal's class.
    proposals : list of Tensor
        float ``[P_i, 4]`` positive proposals per image.
    gt_masks : list of Tensor
        uint8 ``[N_i, H, W]`` part labels of each image's cells.
    mask_matched_idxs : list of Tensor
        int64 ``[P_i]`` matched cell of each positive proposal.
    part_weights : Tensor
        float ``[K]`` weight of each part.
    aligned : bool
        Geometry of the target projection (see :func:`project_parts_on_boxes`).
    edge_weight : float
        A pixel on the cell's outer edge (:func:`edge_pixels`) weighs ``1 + edge_weight``.
    dice_weight : float
        Adds ``dice_weight * soft_dice_loss(p, t)`` (:func:`soft_dice_loss`): the
        cross-entropy alone lets a part of a few percent of the pixels be ignored.

    Returns
    -------
    Tensor
        Scalar loss. Without positive proposals it is zero and still has a
        ``grad_fn``, as in torchvision.
    """
    K, M = part_logits.shape[1], part_logits.shape[-1]
    if part_weights.shape != (K,):
        raise ValueError(f"part_weights must have shape [{K}], got {list(part_weights.shape)}")
    targets = [
        project_parts_on_boxes(m, p, i, K, M, aligned)
        for m, p, i in zip(gt_masks, proposals, mask_matched_idxs)
        if i.numel() > 0
    ]
    if not targets:
        return part_logits.sum() * 0
    target = torch.cat(targets, dim=0)
    log_p = F.log_softmax(part_logits.float(), dim=1)
    weights = part_weights.to(log_p)[None, :, None, None]
    loss = -(weights * target * log_p).sum(dim=1)
    if edge_weight:
        loss = loss * (1.0 + edge_weight * edge_pixels(target).to(loss))
    loss = loss.mean()
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(log_p.exp(), target)
    return loss
