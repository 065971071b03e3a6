"""A prediction's result, and the per-cell measurements of its table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from ..io.calibration import PixelSize
from ..io.masks import CellMask, cell_masks_from_labels
from .selection import MIN_NUCLEUS_FRACTION

__all__ = ["Prediction", "whole_masks", "measure_cells"]


@dataclass
class Prediction:
    """What the model finds in one image.

    Attributes
    ----------
    name : str
        The image's name (file stem).
    image : np.ndarray or None
        float32 ``[H, W, 3]``, the normalised image the model saw; None for an
        image predicted in tiles (it is read window by window, never whole).
    cells : np.ndarray
        uint16 ``[H, W]`` cell labels, 0 background, 1..N by descending score
        (uint32 beyond 65535 cells).
    parts : np.ndarray
        uint8 ``[H, W]`` part labels (index into the config's parts).
    table : pandas.DataFrame
        One row per cell: see :func:`measure_cells`.
    masks : list of CellMask or None
        Cell ``k``'s whole mask in ``masks[k - 1]``, overlaps kept (in ``cells``
        a pixel goes to the best-scoring cell only). None for an image predicted in
        tiles: there each cell is its label-image remainder.
    pixel_size : PixelSize or None
        The image's pixel size (its file's, or given); the label files are written with it.
    """

    name: str
    image: np.ndarray | None
    cells: np.ndarray
    parts: np.ndarray
    table: pd.DataFrame = field(repr=False)
    masks: list[CellMask] | None = field(default=None, repr=False)
    pixel_size: PixelSize | None = None

    def cell_masks(self) -> list[CellMask]:
        """Each cell's mask, cell ``k`` at ``k - 1``: whole where :attr:`masks` has it, else its label-image
        remainder."""
        return self.masks if self.masks is not None else cell_masks_from_labels(self.cells, self.parts)


def whole_masks(cells: np.ndarray, output: dict) -> list[CellMask]:
    """The whole mask of each cell of a one-tile prediction, overlaps kept.

    ``cells`` int ``[H, W]`` are the final labels (renumbered, some detections left out) of the label image
    ``output["cells"]`` (CPU tensors) of :func:`~cellrcnn.modeling.transform.predict_labels`; a final cell's pixels are
    those its detection kept there, so any one of them names the detection and its crop
    (``crop_boxes``, ``crop_parts``).
    """
    tile_cells = output["cells"].numpy()
    boxes = output["crop_boxes"].numpy()
    flat = output["crop_parts"].numpy()
    starts = np.concatenate([[0], np.cumsum((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]))])
    masks = []
    for label, box in enumerate(ndimage.find_objects(np.asarray(cells, dtype=np.int64)), start=1):
        if box is None:
            masks.append(CellMask(0, 0, np.zeros((0, 0), dtype=np.uint8)))
            continue
        y, x = np.unravel_index(np.argmax(cells[box] == label), cells[box].shape)
        rank = int(tile_cells[box][y, x]) - 1
        y0, y1, x0, x1 = (int(v) for v in boxes[rank])
        masks.append(CellMask(y0, x0, flat[starts[rank]:starts[rank + 1]].reshape(y1 - y0, x1 - x0)))
    return masks



def measure_cells(cells: np.ndarray, parts: np.ndarray, image, part_names: tuple[str, ...],
                  scores: dict[int, float] | None = None, classes: dict[int, str] | None = None,
                  pixel_size: PixelSize | float | None = None, name: str = "image", block: int = 1024) -> pd.DataFrame:
    """Per-cell measurements from label images.

    The images are read block by block, so a whole field of view is measured
    without a copy of it.

    Parameters
    ----------
    cells : np.ndarray
        Integer ``[H, W]`` cell labels, 0 background.
    parts : np.ndarray
        Integer ``[H, W]`` part labels.
    image : np.ndarray or ImageField
        ``[H, W, C]`` intensities (the normalised image, values 0..1), or an
        :class:`~cellrcnn.io.ImageField` read window by window.
    part_names : tuple of str
        Part names, background first.
    scores, classes : dict, optional
        Detection score and class name of each cell label.
    pixel_size : PixelSize or float, optional
        Micrometres per pixel; adds areas in µm² (``*_um2``), centroids in µm
        (``centroid_x_um``, ``centroid_y_um``) and the diameter of the circle of
        the cell's area (``diameter_um``).
    name : str
        The image's name, first column.
    block : int
        Side of the blocks read at a time.

    Returns
    -------
    pandas.DataFrame
        image, cell_id, class, score, bbox_x0/y0/x1/y1 (pixel edges),
        centroid_x/y, area_px (whole cell), ``<part>_area_px`` per part,
        ``*_um2`` with a pixel size, ``nc_ratio`` (nucleus / cytoplasm area,
        when both parts exist), ``has_nucleus`` (at least
        :data:`~cellrcnn.inference.selection.MIN_NUCLEUS_FRACTION` of the cell is
        nucleus, when there is a nucleus part) and ``mean_<part>_c<k>``, the mean intensity of
        channel k in each part. Coordinates are those of the whole image.
    """
    read = image.read if hasattr(image, "read") else (lambda y0, y1, x0, x1: image[y0:y1, x0:x1])
    H, W = cells.shape
    n, K = int(cells.max(initial=0)), len(part_names)
    counts = np.zeros((n + 1) * K)
    sums: np.ndarray | None = None
    low = np.full((2, n + 1), np.iinfo(np.int64).max)
    high = np.full((2, n + 1), -1)
    coord_sums = np.zeros((2, n + 1))
    for y0 in range(0, H, block):
        for x0 in range(0, W, block):
            inside = cells[y0:y0 + block, x0:x0 + block] > 0
            if not inside.any():
                continue
            label = cells[y0:y0 + block, x0:x0 + block][inside].astype(np.int64)
            key = label * K + parts[y0:y0 + block, x0:x0 + block][inside].astype(np.int64)
            pixels = np.asarray(read(y0, min(y0 + block, H), x0, min(x0 + block, W)))[inside].astype(np.float64)
            if sums is None:
                sums = np.zeros((pixels.shape[-1], (n + 1) * K))
            counts += np.bincount(key, minlength=(n + 1) * K)
            for c in range(pixels.shape[-1]):
                sums[c] += np.bincount(key, weights=pixels[:, c], minlength=(n + 1) * K)
            for axis, coords in enumerate(np.nonzero(inside)):
                coords = coords + (y0, x0)[axis]
                np.minimum.at(low[axis], label, coords)
                np.maximum.at(high[axis], label, coords)
                coord_sums[axis] += np.bincount(label, weights=coords, minlength=n + 1)
    counts = counts.reshape(n + 1, K)
    ids = np.flatnonzero(counts.sum(axis=1) > 0)
    ids = ids[ids > 0]
    counts, area = counts[ids], counts[ids].sum(axis=1)
    table = pd.DataFrame({
        "image": name,
        "cell_id": ids,
        "class": [(classes or {}).get(int(i), "cell") for i in ids],
        "score": [(scores or {}).get(int(i), np.nan) for i in ids],
        "bbox_x0": low[1, ids], "bbox_y0": low[0, ids], "bbox_x1": high[1, ids] + 1, "bbox_y1": high[0, ids] + 1,
        "centroid_x": coord_sums[1, ids] / area if len(ids) else [], "centroid_y": coord_sums[0, ids] / area if len(ids) else [],
        "area_px": area.astype(np.int64),
    })
    for k, part_name in enumerate(part_names[1:], start=1):
        table[f"{part_name}_area_px"] = counts[:, k].astype(np.int64)
    if pixel_size:
        size = PixelSize.of(pixel_size)
        for column in [c for c in table.columns if c.endswith("area_px")]:
            table[column.replace("_px", "_um2")] = table[column] * size.area
        # centroids of pixel centres: pixel i spans [i, i + 1), its centre lies at i + 0.5
        table["centroid_x_um"] = (table["centroid_x"] + 0.5) * size.x
        table["centroid_y_um"] = (table["centroid_y"] + 0.5) * size.y
        table["diameter_um"] = 2 * np.sqrt(table["area_um2"] / np.pi)
    if "nucleus" in part_names and "cytoplasm" in part_names:
        cyto = table["cytoplasm_area_px"].astype(float)
        table["nc_ratio"] = table["nucleus_area_px"] / cyto.where(cyto > 0)
    if "nucleus" in part_names:  # a detection without one is a suspect cell (on CellaVision, 68 of 68 were false)
        table["has_nucleus"] = table["nucleus_area_px"] >= MIN_NUCLEUS_FRACTION * table["area_px"]
    # without any cell pixel, the channel count comes from the image (an ImageField always gives three)
    channels = sums.shape[0] if sums is not None else (image.shape[-1] if isinstance(image, np.ndarray) else 3)
    means = {f"mean_{part_name}_c{c}": (sums[c].reshape(n + 1, K)[ids, k] if sums is not None else np.zeros(0))
             / np.where(counts[:, k] > 0, counts[:, k], np.nan)
             for k, part_name in enumerate(part_names[1:], start=1) for c in range(channels)}
    return pd.concat([table, pd.DataFrame(means, index=table.index)], axis=1)
