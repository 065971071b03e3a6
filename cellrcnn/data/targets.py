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

__all__ = ["whole_cell_targets", "instance_targets", "parts_from_instances", "select_largest",
           "largest_complete", "largest_complete_label", "border_labels"]


def instance_targets(cells: np.ndarray, parts: np.ndarray, min_area: int = 1, label: int = 1) -> dict[str, np.ndarray]:
    """One target per labelled cell of an instance image.

    Parameters
    ----------
    cells : np.ndarray
        Integer ``[H, W]`` instance labels, 0 background, one id per whole cell.
    parts : np.ndarray
        Integer ``[H, W]`` part labels. Pixels of a cell that ``parts`` calls
        background count as part 1 (cytoplasm: the cell minus its other parts).
    min_area : int
        Cells of fewer pixels are dropped.
    label : int
        Class label given to every cell.

    Returns
    -------
    dict
        ``boxes`` float32 ``[N, 4]``, ``labels`` int64 ``[N]``, ``masks`` uint8
        ``[N, H, W]``; ``N = 0`` for an image without cells.
    """
    if cells.ndim != 2 or cells.shape != parts.shape:
        raise ValueError(f"cells and parts must be 2-D maps of one shape, got {cells.shape} and {parts.shape}")
    regions = [r for r in regionprops(np.asarray(cells, dtype=np.int64)) if r.area >= min_area]
    masks = np.zeros((len(regions), *cells.shape), dtype=np.uint8)
    boxes = np.zeros((len(regions), 4), dtype=np.float32)
    for i, region in enumerate(regions):
        r0, c0, r1, c1 = region.bbox
        boxes[i] = (c0, r0, c1, r1)
        inside = region.image
        masks[i, r0:r1, c0:c1][inside] = np.maximum(parts[r0:r1, c0:c1][inside], 1)
    return {"boxes": boxes, "labels": np.full(len(regions), label, dtype=np.int64), "masks": masks}


def whole_cell_targets(parts: np.ndarray, min_area: int = 1, label: int = 1) -> dict[str, np.ndarray]:
    """One target per whole cell of a part map: a 4-connected region of non-background parts.

    Touching cells in a part map merge into one; give an instance image of cells
    (:func:`instance_targets`) when cells touch. Parameters and return value as in
    :func:`instance_targets`.
    """
    if parts.ndim != 2:
        raise ValueError(f"parts must be a 2-D label map, got shape {parts.shape}")
    return instance_targets(connected_components(parts > 0, connectivity=1), parts, min_area, label)


def parts_from_instances(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Part map from cell and nucleus instance images: 1 cytoplasm (cell minus nucleus), 2 nucleus.

    Nucleus pixels outside every cell are ignored.
    """
    if cells.shape != nuclei.shape:
        raise ValueError(f"cells and nuclei must have one shape, got {cells.shape} and {nuclei.shape}")
    parts = (cells > 0).astype(np.uint8)
    parts[(cells > 0) & (nuclei > 0)] = 2
    return parts


def largest_complete(areas: np.ndarray, complete: np.ndarray) -> int:
    """Index of the largest cell among the complete ones (among all when none is complete).

    Parameters
    ----------
    areas : np.ndarray
        ``[N]`` cell areas, ``N >= 1``.
    complete : np.ndarray
        bool ``[N]``, True for a cell that does not touch the image border.
    """
    pool = np.flatnonzero(complete) if complete.any() else np.arange(len(areas))
    return int(pool[np.argmax(areas[pool])])


def select_largest(target: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep only the largest complete cell: the largest one not touching the image border.

    When every cell touches the border, the largest cell is kept; an image without
    cells stays without. Works on targets from :func:`instance_targets`.
    """
    masks = target["masks"]
    if len(masks) <= 1:
        return target
    H, W = masks.shape[1:]
    areas = (masks > 0).reshape(len(masks), -1).sum(axis=1)
    x0, y0, x1, y1 = target["boxes"].T
    keep = largest_complete(areas, (x0 > 0) & (y0 > 0) & (x1 < W) & (y1 < H))
    return {k: v[keep : keep + 1] for k, v in target.items()}


def largest_complete_label(cells: np.ndarray) -> int:
    """The label of the largest cell of a label image by the rule of :func:`select_largest`; 0 if none."""
    ids, counts = np.unique(cells[cells > 0], return_counts=True)
    if len(ids) == 0:
        return 0
    return int(ids[largest_complete(counts, ~np.isin(ids, border_labels(cells)))])


def border_labels(cells: np.ndarray) -> np.ndarray:
    """The labels (int ``[K]``, 0 included when present) on the border of a label image ``[H, W]``."""
    return np.unique(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]]))
