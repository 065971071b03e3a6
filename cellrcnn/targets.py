"""Whole-cell detection targets from label maps, as pure numpy functions.

A target follows torchvision's contract, with part labels in ``masks``:
``boxes`` float32 ``[N, 4]`` (xyxy, pixel edges: a cell covering columns 10..29
has ``x1 = 10, x2 = 30``), ``labels`` int64 ``[N]`` and ``masks`` uint8
``[N, H, W]`` holding each cell's part labels ``0..K-1`` (0 outside the cell).
"""

from __future__ import annotations

import numpy as np
from skimage.measure import label as connected_components
from skimage.measure import regionprops

__all__ = ["whole_cell_targets"]


def whole_cell_targets(parts: np.ndarray, min_area: int = 1, label: int = 1) -> dict[str, np.ndarray]:
    """One target per whole cell: a connected region of non-background parts.

    Parameters
    ----------
    parts : np.ndarray
        Integer ``[H, W]`` part labels, 0 background.
    min_area : int
        Cells of fewer pixels are dropped (specks, cut-off fragments).
    label : int
        Class label given to every cell.

    Returns
    -------
    dict
        ``boxes`` float32 ``[N, 4]``, ``labels`` int64 ``[N]``, ``masks`` uint8
        ``[N, H, W]``; ``N = 0`` for an image without cells.
    """
    if parts.ndim != 2:
        raise ValueError(f"parts must be a 2-D label map, got shape {parts.shape}")
    cells = [r for r in regionprops(connected_components(parts > 0, connectivity=1)) if r.area >= min_area]
    masks = np.zeros((len(cells), *parts.shape), dtype=np.uint8)
    boxes = np.zeros((len(cells), 4), dtype=np.float32)
    for i, cell in enumerate(cells):
        r0, c0, r1, c1 = cell.bbox
        boxes[i] = (c0, r0, c1, r1)
        region = masks[i, r0:r1, c0:c1]
        region[cell.image] = parts[r0:r1, c0:c1][cell.image]
    return {"boxes": boxes, "labels": np.full(len(cells), label, dtype=np.int64), "masks": masks}
