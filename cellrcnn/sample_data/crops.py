"""Single-cell crops of a folder of sample images: a single-cell model's training data, made from any sample."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["write_single_cell_crops"]


def write_single_cell_crops(sample: str | os.PathLike, out: str | os.PathLike, side: int = 64) -> Path:
    """Write a ``side`` x ``side`` crop around each cell of a sample folder, with only that cell labelled.

    The neighbours a crop cuts into stay in its image, unlabelled, as in real single-cell data sets (the WBC
    crops): a model trained on them records ``single_cell`` and keeps one cell of an image like them.

    Parameters
    ----------
    sample : path
        A folder with ``images/*.png`` (RGB uint8 ``[H, W, 3]``) and ``masks/*.png`` (uint8 part labels
        ``[H, W]``, 0 background), as ``data/sample``; a cell is a 8-connected region of non-zero parts.
    out : path
        Folder to write ``images/<stem>_<cell>.png`` and ``masks/<stem>_<cell>.png`` in (created).
    side : int
        The crops' side, at most the images' shorter side.

    Returns
    -------
    Path
        ``out``.
    """
    from skimage.io import imread, imsave
    from skimage.measure import label, regionprops

    sample, out = Path(sample), Path(out)
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for path in sorted((sample / "images").glob("*.png")):
        image, parts = imread(path), imread(sample / "masks" / path.name)
        cells = label(parts > 0)
        for region in regionprops(cells):
            cy, cx = (int(c) for c in region.centroid)
            y0 = int(np.clip(cy - side // 2, 0, parts.shape[0] - side))
            x0 = int(np.clip(cx - side // 2, 0, parts.shape[1] - side))
            window = (slice(y0, y0 + side), slice(x0, x0 + side))
            name = f"{path.stem}_{region.label}.png"
            imsave(out / "images" / name, image[window], check_contrast=False)
            imsave(out / "masks" / name, np.where(cells[window] == region.label, parts[window], 0).astype(np.uint8),
                   check_contrast=False)
    return out
