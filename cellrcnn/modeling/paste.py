"""Pasting part probabilities from boxes into whole images, as labels or probabilities."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

__all__ = ["to_label_images", "paste_labels", "paste_parts_in_image"]


def paste_parts_in_image(part_probs: Tensor, boxes: Tensor, image_size: tuple[int, int],
                         threshold: float = 0.5, aligned: bool = True) -> dict[str, Tensor]:
    """Paste per-RoI part probabilities into the image.

    With ``aligned=True`` (pixel-exact) each image pixel whose centre lies in or
    near a box samples the ``M x M`` map bilinearly at that centre, the inverse
    of :func:`cellrcnn.modeling.losses.project_parts_on_boxes` with ``aligned=True``:
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
        the detections by descending score. Each detection's whole mask, overlaps
        kept, in ``crop_boxes`` int64 ``[N, 4]`` (``y0, y1, x0, x1`` of label
        ``k``'s box in row ``k - 1``) and ``crop_parts`` uint8, the boxes' part labels
        flattened one after another (a crop costs its box, not the image).
    """
    H, W = image_size
    order = torch.argsort(scores, descending=True)
    device = part_probs.device
    cells = torch.zeros((H, W), dtype=torch.int64, device=device)
    parts = torch.zeros((H, W), dtype=torch.uint8, device=device)
    crop_boxes = torch.zeros((len(order), 4), dtype=torch.int64)
    crops = [torch.zeros(0, dtype=torch.uint8, device=device)]
    regions = _sample_exact if aligned else _sample_torchvision
    for rank, (ys, xs), fg in regions(part_probs[order, 1:], boxes[order], H, W):
        held, held_parts = cells[ys, xs], parts[ys, xs]  # views: written in place
        own = torch.where(fg.sum(dim=0) > threshold, fg.argmax(dim=0).to(torch.uint8) + 1, 0).to(torch.uint8)
        free = (own > 0) & (held == 0)
        held.copy_(torch.where(free, rank + 1, held))  # no boolean indexing: no device sync per detection
        held_parts.copy_(torch.where(free, own, held_parts))
        crop_boxes[rank] = torch.tensor([ys.start, ys.stop, xs.start, xs.stop])
        crops.append(own.flatten())
    return {"cells": cells, "parts": parts, "order": order, "crop_boxes": crop_boxes.to(device),
            "crop_parts": torch.cat(crops)}


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
