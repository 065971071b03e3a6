"""Whole-cell detection targets from label maps, as pure numpy functions.

A target follows torchvision's contract, with part labels in ``masks``:
``boxes`` float32 ``[N, 4]`` (xyxy, pixel edges: a cell covering columns 10..29
has ``x1 = 10, x2 = 30``), ``labels`` int64 ``[N]`` and ``masks`` uint8
``[N, H, W]`` holding each cell's part labels ``0..K-1`` (0 outside the cell).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.measure import label as connected_components
from skimage.measure import regionprops

__all__ = ["whole_cell_targets", "instance_targets", "overlapping_targets", "parts_from_instances", "tie_parts",
           "cell_part_maps", "annotated_part_maps", "instances_from_labels", "select_largest", "largest_complete", "largest_complete_label", "border_labels"]

#: A part is tied only to a cell holding at least this fraction of its pixels.
TIE_CONTAINMENT = 0.5
#: Per-cell maps are made from label images only up to this many bytes.
MAX_STACK_BYTES = 2**31


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


def overlapping_targets(instances: np.ndarray, min_area: int = 1, label: int | np.ndarray = 1) -> dict[str, np.ndarray]:
    """One target per cell of a stack of per-cell part maps, for cells that may overlap.

    Parameters
    ----------
    instances : np.ndarray
        uint8 ``[N, H, W]``: cell ``i``'s part labels, 0 outside it. A pixel under
        two cells is inside both maps, so each cell keeps its whole mask.
    min_area : int
        Cells of fewer pixels are dropped (a cell cut by a crop keeps its visible part).
    label : int or np.ndarray
        Class label of every cell, or int ``[N]``, one per cell.

    Returns
    -------
    dict
        ``boxes`` float32 ``[N', 4]``, ``labels`` int64 ``[N']``, ``masks`` uint8
        ``[N', H, W]``, as :func:`instance_targets`, for the cells kept.
    """
    if instances.ndim != 3:
        raise ValueError(f"instances must be a stack [N, H, W] of part maps, got shape {instances.shape}")
    labels = np.broadcast_to(np.asarray(label, dtype=np.int64), (len(instances),))
    areas = (instances > 0).sum(axis=(1, 2))
    keep = np.flatnonzero(areas >= max(min_area, 1))
    boxes = np.zeros((len(keep), 4), dtype=np.float32)
    for i, k in enumerate(keep):
        rows, cols = np.flatnonzero((instances[k] > 0).any(axis=1)), np.flatnonzero((instances[k] > 0).any(axis=0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return {"boxes": boxes, "labels": labels[keep].copy(),
            "masks": np.ascontiguousarray(instances[keep], dtype=np.uint8)}


def tie_parts(cells: np.ndarray, parts: np.ndarray, min_containment: float = TIE_CONTAINMENT) -> np.ndarray:
    """Which cell each separately annotated part (a nucleus) belongs to, when cells may overlap.

    The rule, in order:

    1. A part may go only to a cell holding at least ``min_containment`` of its pixels.
    2. Each cell takes at most one part first: the one-to-one assignment that
       maximises the total share of part pixels inside their cells (a nucleus under an
       overlapping neighbour lies inside both cells, and goes to the one without another
       nucleus). Ties go to the cell whose centre is nearer the part's centre.
    3. A part left over (a cell with two nuclei) goes to the cell holding most of it.
    4. A part no cell holds enough of is not tied (-1): :func:`cellrcnn.check_folder` lists it.

    Parameters
    ----------
    cells : np.ndarray
        bool ``[N, H, W]`` whole-cell masks.
    parts : np.ndarray
        bool ``[M, H, W]`` part masks.
    min_containment : float
        The least share of a part's pixels inside a cell for the two to be tied.

    Returns
    -------
    np.ndarray
        int64 ``[M]``: the index of each part's cell, -1 where none.
    """
    if cells.ndim != 3 or parts.ndim != 3 or cells.shape[1:] != parts.shape[1:]:
        raise ValueError(f"cells and parts must be stacks [N, H, W] of one image size, got {cells.shape} and "
                         f"{parts.shape}")
    tied = np.full(len(parts), -1, dtype=np.int64)
    if len(cells) == 0 or len(parts) == 0:
        return tied
    flat_cells = cells.reshape(len(cells), -1).astype(np.float32)
    flat_parts = parts.reshape(len(parts), -1).astype(np.float32)
    sizes = np.maximum(flat_parts.sum(axis=1), 1)
    share = (flat_parts @ flat_cells.T) / sizes[:, None]  # [M, N]: share of part m inside cell n
    allowed = share >= min_containment
    yx = np.indices(cells.shape[1:]).reshape(2, -1).astype(np.float32)
    centre = lambda flat: (flat @ yx.T) / np.maximum(flat.sum(axis=1), 1)[:, None]  # noqa: E731
    distance = np.linalg.norm(centre(flat_parts)[:, None] - centre(flat_cells)[None], axis=2)
    # the share first; the distance (scaled below any difference of shares that matters) breaks ties
    cost = np.where(allowed, -share + 1e-6 * distance / max(cells.shape[1:]), 1e6)
    rows, cols = linear_sum_assignment(cost)
    for m, n in zip(rows, cols):
        if allowed[m, n]:
            tied[m] = n
    for m in np.flatnonzero((tied < 0) & allowed.any(axis=1)):
        tied[m] = int(np.argmin(cost[m]))
    return tied


def cell_part_maps(cells: np.ndarray, parts: dict[int, np.ndarray], tied: dict[int, np.ndarray]) -> np.ndarray:
    """Per-cell part maps of overlapping cells: inside each cell its own parts, the rest part 1 (cytoplasm).

    Parameters
    ----------
    cells : np.ndarray
        bool ``[N, H, W]`` whole-cell masks.
    parts : dict of int to np.ndarray
        Part index (2, 3, ...) to bool ``[M_k, H, W]`` masks of that part's annotations.
    tied : dict of int to np.ndarray
        Part index to int ``[M_k]``, each annotation's cell from :func:`tie_parts` (-1: none).

    Returns
    -------
    np.ndarray
        uint8 ``[N, H, W]``: 0 outside the cell, 1 its cytoplasm, ``k`` its own part ``k``. Another cell's
        nucleus lying beneath is cytoplasm of this cell: only a cell's own parts label it.
    """
    maps = cells.astype(np.uint8)
    for index in sorted(parts):
        for mask, cell in zip(parts[index], tied[index]):
            if cell >= 0:
                maps[cell][mask & cells[cell]] = index
    return maps


def annotated_part_maps(found: dict, part_names: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """Per-cell part maps of annotated cells (:func:`cellrcnn.io.coco.coco_masks` or
    :func:`cellrcnn.io.geojson.geojson_masks` output): each part tied by its link where every part of its kind
    has one, else by :func:`tie_parts`.

    Parameters
    ----------
    found : dict
        ``cells`` bool ``[N, H, W]``, ``parts`` name to bool ``[M, H, W]``, ``links`` name to int ``[M]``.
    part_names : tuple of str
        The annotated parts, parts 2, 3, ... in order.

    Returns
    -------
    tuple
        uint8 ``[N, H, W]`` maps (:func:`cell_part_maps`), and the number of part annotations no cell holds.
    """
    cells = found["cells"]
    parts = {k + 2: found["parts"][name] for k, name in enumerate(part_names)}
    tied = {k + 2: found["links"][name] if name in found["links"] else tie_parts(cells, parts[k + 2])
            for k, name in enumerate(part_names)}
    return cell_part_maps(cells, parts, tied), sum(int((t < 0).sum()) for t in tied.values())


def instances_from_labels(cells: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Per-cell part maps uint8 ``[N, H, W]`` from label images: ``cells`` int ``[H, W]`` (labels 1..N) and
    ``parts`` uint8 ``[H, W]``; map ``k`` is cell ``k + 1``'s parts, with cell pixels labelled background in
    ``parts`` counted as cytoplasm. A label absent from ``cells`` gives an empty map."""
    count = int(cells.max(initial=0))
    if count * cells.size > MAX_STACK_BYTES:
        raise ValueError(f"{count} cells in {cells.shape[1]}x{cells.shape[0]} pixels are too many to write as COCO "
                         f"masks here; write ROI sets for fields this large")
    ids = np.arange(1, count + 1, dtype=cells.dtype)[:, None, None]
    own = cells[None] == ids
    return np.where(own, np.maximum(parts, 1)[None], 0).astype(np.uint8)


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
