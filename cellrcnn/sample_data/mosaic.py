"""A mosaic of real single-cell crops, with their ground truth in place."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ..config.data import DataConfig
from ..io.files import DataError
from ..io.folders import Pair

__all__ = ["wbc_mosaic"]

logger = logging.getLogger(__name__)


def wbc_mosaic(pairs: Sequence[Pair], config: DataConfig, columns: int, size: tuple[int, int] | None = None,
               fill: Sequence[int] | None = None, gap: int = 0) -> dict[str, Any]:
    """Real single-cell crops tiled edge to edge into one large image, with their ground truth in place.

    Made for the white-blood-cell crops (``DataConfig(image_glob="*.bmp", mask_glob="*.png",
    part_values=(0, 128, 255))``) to test tiled prediction on real pixels; any folder of image/mask pairs
    works. Each image is read as training reads it (:func:`cellrcnn.data.load_sample`); its cells are its own
    instance image when the encoding has one, else the 4-connected regions of its part map (as
    :func:`cellrcnn.data.targets.whole_cell_targets` finds them), so cells of neighbouring crops that touch at a
    seam stay separate. Everything stays in memory: nothing is copied next to the data.

    Parameters
    ----------
    pairs : sequence of cellrcnn.io.Pair
        The crops, placed row-major in this order (from :func:`cellrcnn.find_pairs`).
    config : DataConfig
        How to read them.
    columns : int
        Crops per mosaic row; the rows are ``ceil(len(pairs) / columns)``, the last one filled up with
        ``fill`` and background labels.
    size : (int, int), optional
        ``(h, w)`` of every crop: each image is cut to its central ``h x w`` window (DataError naming an image
        smaller than that). None: every image must already have one size (DataError naming the first that
        differs).
    fill : sequence of int, optional
        RGB colour of empty grid places and gaps; by default the median colour of the crops' background.
    gap : int
        Pixels of ``fill`` between neighbouring crops (default 0: edge to edge). Edge to edge, the cut
        borders of two unrelated crops meet at every seam, which no real field has; a gap of background
        gives each cell the surroundings it had in its own crop.

    Returns
    -------
    dict
        ``image`` uint8 ``[H, W, 3]`` (images scaled to [0, 1] by reading, times 255: 8-bit RGB unchanged),
        ``parts`` uint8 ``[H, W]`` part indices, ``cells`` int32 ``[H, W]`` instance labels unique over the
        mosaic (crop ``i``'s numbered after those of crops ``< i``), ``windows``: ``(y0, y1, x0, x1)`` of each
        crop in the mosaic, ``crops``: ``(y0, y1, x0, x1)`` of each window in its own image, ``names``: the
        image stems.
    """
    from skimage.measure import label as connected_components

    from ..data.dataset import load_sample  # loads torch: only when a mosaic is made

    if not len(pairs):
        raise ValueError("wbc_mosaic needs at least one image/mask pair")
    if not (isinstance(columns, int) and columns > 0):
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap must be a non-negative integer, got {gap!r}")
    gap = int(gap)
    rows = -(-len(pairs) // columns)
    h = w = None
    if size is not None:
        h, w = (int(v) for v in size)
    image = parts = cells = None
    windows, crops, names = [], [], []
    count = 0
    for i, pair in enumerate(pairs):
        sample = load_sample(pair, config)
        H, W = sample["parts"].shape
        if h is None:
            h, w = H, W
        if size is None and (H, W) != (h, w):
            raise DataError(f"{pair.image}: {W}x{H} pixels, but the first crop ({pairs[0].image.name}) is {w}x{h}; "
                            f"mosaic crops must share one size: pass size=(h, w) to cut each to its centre")
        if H < h or W < w:
            raise DataError(f"{pair.image}: {W}x{H} pixels, smaller than the {w}x{h} crop asked for")
        if image is None:
            shape = (rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap)
            image = np.zeros((*shape, 3), dtype=np.uint8)
            parts = np.zeros(shape, dtype=np.uint8)
            cells = np.zeros(shape, dtype=np.int32)
        cy, cx = (H - h) // 2, (W - w) // 2
        window = (slice(cy, cy + h), slice(cx, cx + w))
        y0, x0 = (i // columns) * (h + gap), (i % columns) * (w + gap)
        place = (slice(y0, y0 + h), slice(x0, x0 + w))
        image[place] = np.rint(sample["image"][window] * 255)
        parts[place] = sample["parts"][window]
        if sample["cells"] is not None:  # the crop's own instances, numbered 1..n
            instances = sample["cells"][window]
            ids = np.unique(instances[instances > 0])
            own = np.where(instances > 0, np.searchsorted(ids, instances) + 1, 0)
        else:
            own = connected_components(parts[place] > 0, connectivity=1)
        cells[place] = np.where(own > 0, own + count, 0)
        count += int(own.max(initial=0))
        windows.append((y0, y0 + h, x0, x0 + w))
        crops.append((cy, cy + h, cx, cx + w))
        names.append(pair.name)
    covered = np.zeros(parts.shape, dtype=bool)
    for y0, y1, x0, x1 in windows:
        covered[y0:y1, x0:x1] = True
    if not covered.all():
        if fill is None:
            background = image[covered & (parts == 0)]
            fill = np.median(background, axis=0) if len(background) else (0, 0, 0)
        image[~covered] = np.asarray(fill, dtype=np.float64).round().astype(np.uint8)
    logger.debug("mosaic of %d crops (%d x %d grid of %dx%d), %d cells", len(pairs), rows, columns, w, h, count)
    return {"image": image, "parts": parts, "cells": cells, "windows": windows, "crops": crops, "names": names}
