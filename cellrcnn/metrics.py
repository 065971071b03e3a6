"""Segmentation metrics as pure numpy functions."""

from __future__ import annotations

import numpy as np

__all__ = ["dice", "part_dice"]


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
