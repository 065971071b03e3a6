"""Segmentation metrics as pure numpy functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["dice", "part_dice", "edge_band_dice", "iou_matrix", "assign", "matching", "coco_mask_ap", "isbi_cells", "isbi_summary",
           "nucleus_detection", "nucleus_summary"]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient ``2|A n B| / (|A| + |B|)`` of two boolean masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} and {truth.shape}")
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, truth).sum() / total)


def part_dice(pred_parts: np.ndarray, true_parts: np.ndarray, parts: tuple[str, ...]) -> dict[str, float]:
    """Dice of each foreground part and of the whole cell between two part-label images.

    Parameters
    ----------
    pred_parts, true_parts : np.ndarray
        Integer ``[H, W]`` part labels, 0 background.
    parts : tuple of str
        Part names, background first.

    Returns
    -------
    dict
        ``{"<part>_dice": ...}`` for each foreground part, ``"cell_dice"`` (any
        part against any part) and ``"part_dice"``, the mean over foreground parts.
    """
    scores = {f"{name}_dice": dice(pred_parts == k, true_parts == k) for k, name in enumerate(parts) if k > 0}
    out = dict(scores)
    out["cell_dice"] = dice(pred_parts > 0, true_parts > 0)
    out["part_dice"] = float(np.mean(list(scores.values())))
    return out


def edge_band_dice(pred_parts: np.ndarray, true_parts: np.ndarray, parts: tuple[str, ...],
                   width: float = 3.0) -> dict[str, float]:
    """Where the part error lies: :func:`part_dice` near the true cells' edge and inside them.

    The *band* holds the pixels within ``width`` pixels (Euclidean) of the true
    cells' outer edge, on either side; the *interior* the cell pixels farther
    inside. A part absent from a region in both images scores 1 there, as in :func:`dice`.

    Parameters
    ----------
    pred_parts, true_parts : np.ndarray
        Integer ``[H, W]`` part labels, 0 background.
    parts : tuple of str
        Part names, background first.
    width : float
        Half-width of the band, in pixels.

    Returns
    -------
    dict
        ``"<name>_band"`` and ``"<name>_interior"`` for every key ``<name>`` of
        :func:`part_dice` (``cytoplasm_dice_band``, ``cell_dice_interior``, ...), and
        ``band_pixels`` and ``interior_pixels``.
    """
    from scipy.ndimage import distance_transform_edt

    pred_parts, true_parts = np.asarray(pred_parts), np.asarray(true_parts)
    if pred_parts.shape != true_parts.shape:
        raise ValueError(f"label images differ in shape: {pred_parts.shape} and {true_parts.shape}")
    cell = true_parts > 0
    # distance of each cell pixel to the nearest outside pixel, and of each outside pixel to the nearest cell pixel
    inside = distance_transform_edt(cell)
    outside = distance_transform_edt(~cell) if cell.any() else np.full(cell.shape, np.inf)
    band = np.where(cell, inside <= width, outside <= width)
    interior = cell & (inside > width)
    out: dict[str, float] = {}
    for region, where in (("band", band), ("interior", interior)):
        for name, value in part_dice(pred_parts[where], true_parts[where], parts).items():
            out[f"{name}_{region}"] = value
        out[f"{region}_pixels"] = float(where.sum())
    return out


def iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """IoU of every true instance with every predicted instance.

    Parameters
    ----------
    true_labels, pred_labels : np.ndarray
        Integer ``[H, W]`` instance images, 0 background.

    Returns
    -------
    np.ndarray
        float ``[n_true, n_pred]``, rows and columns in increasing label order
        of the labels present.
    """
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"label images differ in shape: {true_labels.shape} and {pred_labels.shape}")
    t_ids, t_idx = np.unique(true_labels, return_inverse=True)
    p_ids, p_idx = np.unique(pred_labels, return_inverse=True)
    overlap = np.bincount(t_idx.ravel() * len(p_ids) + p_idx.ravel(),
                          minlength=len(t_ids) * len(p_ids)).reshape(len(t_ids), len(p_ids))
    union = overlap.sum(1, keepdims=True) + overlap.sum(0, keepdims=True) - overlap
    iou = overlap / np.maximum(union, 1)
    return iou[t_ids != 0][:, p_ids != 0]


def assign(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching with the most pairs at ``IoU >= threshold``, ties broken by total IoU.

    Returns the row and column indices of the matched pairs (all with IoU >= threshold).
    """
    from scipy.optimize import linear_sum_assignment

    if iou.size == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    # As stardist's matching: a pair over the threshold is worth 1, plus less than 1/n for its IoU.
    cost = -(iou >= threshold).astype(float) - iou / (2 * max(iou.shape))
    rows, cols = linear_sum_assignment(cost)
    keep = iou[rows, cols] >= threshold
    return rows[keep], cols[keep]


def matching(true_labels: np.ndarray, pred_labels: np.ndarray,
             thresholds: tuple[float, ...] = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))) -> "pd.DataFrame":
    """Instance matching at IoU thresholds, one-to-one and optimal at each threshold.

    For each threshold: true positives (pairs from :func:`assign`), false
    positives, false negatives, precision, recall, F1 and panoptic quality
    ``PQ = sum(IoU of TP) / (TP + FP/2 + FN/2)`` (``iou_sum`` is its numerator,
    for pooling over images). Two empty images score 1.

    Returns
    -------
    pandas.DataFrame
        One row per threshold.
    """
    import pandas as pd

    iou = iou_matrix(true_labels, pred_labels)
    n_true, n_pred = iou.shape
    out = []
    for t in thresholds:
        rows, cols = assign(iou, t)
        tp = len(rows)
        fp, fn = n_pred - tp, n_true - tp
        empty = n_true == 0 and n_pred == 0
        out.append({"threshold": float(t), "tp": tp, "fp": fp, "fn": fn,
                    "precision": 1.0 if empty else (tp / n_pred if n_pred else 0.0),
                    "recall": 1.0 if empty else (tp / n_true if n_true else 0.0),
                    "f1": 1.0 if empty else 2 * tp / (n_true + n_pred),
                    "pq": 1.0 if empty else float(iou[rows, cols].sum() / (tp + fp / 2 + fn / 2)),
                    "iou_sum": float(iou[rows, cols].sum())})
    return pd.DataFrame(out)


def coco_mask_ap(true_labels: list[np.ndarray], pred_labels: list[np.ndarray],
                 pred_scores: list[dict[int, float]] | None = None) -> dict[str, float]:
    """COCO mask AP, AP50 and AP75 of instances, computed by pycocotools (which lets instances overlap).

    Parameters
    ----------
    true_labels, pred_labels : list of np.ndarray
        Per image, an integer ``[H, W]`` instance image (0 background), or ``[N, H, W]`` per-cell masks
        (nonzero inside the cell; cell ``k + 1`` is ``[k]``), where cells may overlap.
    pred_scores : list of dict, optional
        Confidence of each predicted label per image; without scores every
        prediction scores 1 and AP reduces to precision at each recall reached.

    Returns
    -------
    dict
        ``AP`` (IoU 0.50:0.95), ``AP50`` and ``AP75``; -1 where there is no ground truth.
    """
    import contextlib
    import io

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def encode(instances: np.ndarray) -> list[tuple[int, dict]]:
        """(label, RLE) of each instance with pixels."""
        if instances.ndim == 2:
            ids = np.unique(instances)
            ids = ids[ids != 0]
            masks = instances[..., None] == ids[None, None, :]
        else:
            ids = np.arange(1, len(instances) + 1)
            masks = np.moveaxis(instances > 0, 0, -1)
        keep = masks.any(axis=(0, 1))
        ids, masks = ids[keep], masks[..., keep]
        rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8))) if len(ids) else []
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
        return list(zip(ids.tolist(), rles))

    images, annotations, detections = [], [], []
    for image_id, (truth, pred) in enumerate(zip(true_labels, pred_labels), start=1):
        images.append({"id": image_id, "height": int(truth.shape[-2]), "width": int(truth.shape[-1])})
        for _, rle in encode(truth):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "segmentation": rle, "area": float(mask_utils.area(rle)),
                                "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
        scores = pred_scores[image_id - 1] if pred_scores is not None else {}
        for label, rle in encode(pred):
            detections.append({"image_id": image_id, "category_id": 1, "segmentation": rle,
                               "score": float(scores.get(int(label), 1.0))})
    if not annotations:
        return {"AP": -1.0, "AP50": -1.0, "AP75": -1.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth_api = COCO()
        truth_api.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}
        truth_api.createIndex()
        if not detections:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        result = truth_api.loadRes(detections)
        evaluator = COCOeval(truth_api, result, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"AP": float(evaluator.stats[0]), "AP50": float(evaluator.stats[1]), "AP75": float(evaluator.stats[2])}


#: A cell segmentation is "good" in the ISBI 2014 challenge above this Dice.
ISBI_GOOD_DICE = 0.7
#: A nucleus is detected when this share of the detection lies in it, and of it in the detection (Gençtav et al.).
NUCLEUS_OVERLAP = 0.6


def _overlaps(true_masks: np.ndarray, pred_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts: the intersection ``[N, M]`` of every pair, and the sizes ``[N]`` and ``[M]``."""
    if true_masks.ndim != 3 or pred_masks.ndim != 3 or true_masks.shape[1:] != pred_masks.shape[1:]:
        raise ValueError(f"masks must be stacks [N, H, W] of one image size, got {true_masks.shape} and "
                         f"{pred_masks.shape}")
    pixels = int(np.prod(true_masks.shape[1:]))
    t = true_masks.reshape(len(true_masks), pixels).astype(np.float32)
    p = pred_masks.reshape(len(pred_masks), pixels).astype(np.float32)
    return t @ p.T, t.sum(axis=1), p.sum(axis=1)


def isbi_cells(true_masks: np.ndarray, pred_masks: np.ndarray, good: float = ISBI_GOOD_DICE) -> "pd.DataFrame":
    """The ISBI 2014 overlapping-cell measures of each true cell: its best predicted cell, and whether it is good.

    Cells may overlap on both sides: each is its own mask. Summarise a set of images with
    :func:`isbi_summary` over the rows of all of them.

    Parameters
    ----------
    true_masks : np.ndarray
        bool ``[N, H, W]`` true cells.
    pred_masks : np.ndarray
        bool ``[M, H, W]`` predicted cells.
    good : float
        The Dice above which a cell's segmentation is good (0.7 in the challenge).

    Returns
    -------
    pandas.DataFrame
        One row per true cell: ``dice`` of the predicted cell that best matches it (0 with none),
        ``good`` (``dice > good``), ``tpp`` = |P ∩ T| / |T| and ``fpp`` = |P \\ T| / (pixels not in T), the
        pixel true and false positive rates of that predicted cell.
    """
    import pandas as pd

    inter, t_size, p_size = _overlaps(true_masks, pred_masks)
    if inter.shape[1] == 0:  # nothing predicted: every cell missed
        inter, p_size = np.zeros((len(true_masks), 1)), np.zeros(1)
    dice_all = 2 * inter / np.maximum(t_size[:, None] + p_size[None, :], 1)
    best = dice_all.argmax(axis=1)
    rows = np.arange(len(true_masks))
    dice_best, hit = dice_all[rows, best], inter[rows, best]
    fp = p_size[best] - hit
    pixels = float(np.prod(true_masks.shape[1:]))
    return pd.DataFrame({"dice": dice_best, "good": dice_best > good, "tpp": hit / np.maximum(t_size, 1),
                         "fpp": fp / np.maximum(pixels - t_size, 1)})


def isbi_summary(cells: "pd.DataFrame") -> dict[str, float]:
    """The challenge's figures from the rows of :func:`isbi_cells`: ``dice``, ``tpp`` and ``fpp`` averaged over
    the good cells, and ``fno``, the share of true cells without a good segmentation (NaN without cells)."""
    good = cells[cells["good"]]
    mean = (lambda column: float(good[column].mean()) if len(good) else float("nan"))  # noqa: E731
    return {"dice": mean("dice"), "fno": 1.0 - float(cells["good"].mean()) if len(cells) else float("nan"),
            "tpp": mean("tpp"), "fpp": mean("fpp"), "cells": float(len(cells))}


def nucleus_detection(true_masks: np.ndarray, pred_masks: np.ndarray,
                      overlap: float = NUCLEUS_OVERLAP) -> dict[str, float]:
    """Nucleus detection as the ISBI 2014 challenge scores it: a detection ``P`` finds a nucleus ``T`` when
    |P ∩ T| / |P| > ``overlap`` and |P ∩ T| / |T| > ``overlap``.

    Parameters
    ----------
    true_masks, pred_masks : np.ndarray
        bool ``[N, H, W]`` and ``[M, H, W]`` nucleus masks.

    Returns
    -------
    dict
        ``tp`` (true nuclei found), ``found`` (detections that found one), ``true`` and ``pred`` (counts),
        ``precision``, ``recall`` and ``f1``.
    """
    inter, t_size, p_size = _overlaps(true_masks, pred_masks)
    found = (inter / np.maximum(p_size[None, :], 1) > overlap) & (inter / np.maximum(t_size[:, None], 1) > overlap)
    tp_true, tp_pred = int(found.any(axis=1).sum()), int(found.any(axis=0).sum())
    precision = tp_pred / len(pred_masks) if len(pred_masks) else float("nan")
    recall = tp_true / len(true_masks) if len(true_masks) else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"tp": float(tp_true), "found": float(tp_pred), "true": float(len(true_masks)),
            "pred": float(len(pred_masks)), "precision": precision, "recall": recall, "f1": f1}


def nucleus_summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """Nucleus detection over a set of images: the counts of :func:`nucleus_detection`'s rows pooled, then
    ``precision``, ``recall`` and ``f1`` (0 when nothing is found)."""
    pred, true = sum(r["pred"] for r in rows), sum(r["true"] for r in rows)
    precision = sum(r["found"] for r in rows) / max(pred, 1)
    recall = sum(r["tp"] for r in rows) / max(true, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
