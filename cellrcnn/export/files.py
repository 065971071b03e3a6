"""Writing predictions for Fiji, QuPath and analysis: label TIFFs, ImageJ ROI sets, QuPath GeoJSON, overlay PNGs.

Every file is written atomically (to a temporary name, then renamed) and an
existing file is only replaced with ``overwrite=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import roifile
import tifffile
from skimage.io import imsave
from skimage.measure import find_contours
from skimage.segmentation import find_boundaries

from ..inference.measure import Prediction
from ..io.calibration import PixelSize
from ..io.masks import CellMask
from ..utils.files import atomic_write
from ..viz.style import part_colour
from .geojson import cell_features, write_geojson

__all__ = ["OUTPUTS", "OUTPUT_SUFFIXES", "OVERLAY_SIDE", "output_paths", "write_label_tiff", "write_rois", "overlay_rgb",
           "write_overlay", "write_table", "export_prediction"]

#: The file written for each image, by kind: ``<image stem><suffix>``.
OUTPUTS = {"cells": "_cells.tif", "parts": "_parts.tif", "rois": "_rois.zip", "overlay": "_overlay.png",
           "geojson": ".geojson"}
#: The least long side of an overlay PNG, in its pixels: a 128-px crop is drawn 4 times as large.
OVERLAY_SIDE = 512
#: Stem suffixes of those files, so that a folder of results is not read back as input images.
OUTPUT_SUFFIXES = tuple(stem for name in OUTPUTS.values() if (stem := name.rsplit(".", 1)[0]))


def output_paths(out_dir: str | os.PathLike, name: str, rois: bool = False, overlays: bool = False,
                 geojson: bool = False) -> dict[str, Path]:
    """The files written for image ``name``: ``cells``, ``parts`` and optionally ``rois``, ``overlay``,
    ``geojson``."""
    kinds = ["cells", "parts"] + ["rois"] * rois + ["overlay"] * overlays + ["geojson"] * geojson
    return {kind: Path(out_dir) / f"{name}{OUTPUTS[kind]}" for kind in kinds}


def write_label_tiff(path: str | os.PathLike, labels: np.ndarray, info: str = "",
                     pixel_size: PixelSize | float | None = None, overwrite: bool = False) -> Path:
    """A zlib-compressed ImageJ TIFF of a label image (uint8 or uint16; uint32 as 32-bit float), with ``info`` in its
    metadata.

    With ``pixel_size`` (micrometres, one figure or a :class:`~cellrcnn.io.calibration.PixelSize`) the resolution
    and ImageJ's unit are set so that Fiji and QuPath measure in µm, and it reads back with
    :func:`~cellrcnn.io.calibration.pixel_size_of`.
    """
    if labels.dtype not in (np.uint8, np.uint16, np.uint32):
        raise ValueError(f"label images are written as uint8, uint16 or uint32, got {labels.dtype}")
    if labels.dtype == np.uint32:  # ImageJ has no 32-bit integers; its 32-bit floats hold labels exactly to 2**24
        labels = labels.astype(np.float32)
    metadata = {"Info": info} if info else {}
    extra = {}
    if pixel_size:
        size = PixelSize.of(pixel_size)
        metadata["unit"] = "micron"
        extra["resolution"] = (1.0 / size.x, 1.0 / size.y)
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, labels, imagej=True, metadata=metadata,
                                                           compression="zlib", **extra), overwrite=overwrite)


def write_rois(path: str | os.PathLike, cells: list[CellMask], overwrite: bool = False) -> Path:
    """An ImageJ ROI set (zip) with the whole outline of each cell (``cells[k - 1]`` named ``cell_<k>``): ROIs of
    overlapping cells overlap."""
    rois = []
    for label, cell in enumerate(cells, start=1):
        mask = np.pad(cell.mask, 1)  # closed contours for cells at the border
        contours = find_contours(mask.astype(np.uint8), 0.5)
        if not contours:
            continue
        yx = max(contours, key=len) - 1 + np.array([cell.y0, cell.x0])
        roi = roifile.ImagejRoi.frompoints(yx[:, ::-1])
        roi.name = f"cell_{label}"
        rois.append(roi)
    return atomic_write(path, lambda tmp: roifile.roiwrite(tmp, rois, mode="w"), overwrite=overwrite)


def overlay_rgb(image: np.ndarray, cells: np.ndarray, parts: np.ndarray, part_names: tuple[str, ...]) -> np.ndarray:
    """uint8 ``[H, W, 3]``: the image (values 0..1) with cell outlines and the outline of each part, in the part
    colours."""
    rgb = (np.clip(image[..., :3], 0, 1) * 255).astype(np.uint8).copy()
    for k, name in enumerate(part_names):
        if k == 0 or name == "cytoplasm":  # the cytoplasm's outer edge is the cell outline
            continue
        rgb[find_boundaries(np.where(parts == k, cells, 0), mode="inner")] = part_colour(name, k)
    rgb[find_boundaries(cells, mode="inner")] = part_colour("cell")
    return rgb


def write_overlay(path: str | os.PathLike, image: np.ndarray, cells: np.ndarray, parts: np.ndarray,
                  part_names: tuple[str, ...], overwrite: bool = False) -> Path:
    """:func:`overlay_rgb` as a PNG, enlarged by a whole factor (each pixel a block) until its long side is at
    least :data:`OVERLAY_SIDE` pixels, so that a person can see it; the label TIFFs keep the image's pixels."""
    rgb = overlay_rgb(image, cells, parts, part_names)
    factor = max(1, -(-OVERLAY_SIDE // max(rgb.shape[:2])))
    rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb
    return atomic_write(path, lambda tmp: imsave(tmp, rgb, check_contrast=False), overwrite=overwrite)


def write_table(table: pd.DataFrame, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The per-cell table as CSV (``cells.csv`` of ``cellrcnn-predict``), written atomically."""
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False), overwrite=overwrite)


def export_prediction(prediction: Prediction, out_dir: str | os.PathLike, part_names: tuple[str, ...],
                      pixel_size: PixelSize | float | None = None, rois: bool = False, overlays: bool = False,
                      overwrite: bool = False, geojson: bool = False) -> dict[str, Path]:
    """Write every file of one prediction; returns their paths (see :func:`output_paths`).

    The label TIFFs give a pixel under two cells to the better-scoring one; the ROI set and the
    GeoJSON keep each cell's whole outline (:attr:`Prediction.masks`). No overlay is drawn for a
    prediction without its image (a field predicted in tiles). The label TIFFs carry ``pixel_size``, by
    default the prediction's own (its image's).
    """
    pixel_size = pixel_size or prediction.pixel_size
    paths = output_paths(out_dir, prediction.name, rois, overlays, geojson)
    parts_info = "parts: " + ", ".join(f"{k}={n}" for k, n in enumerate(part_names))
    write_label_tiff(paths["cells"], prediction.cells if prediction.cells.dtype == np.uint32 else
                     prediction.cells.astype(np.uint16),
                     "cell labels: 0 background, 1..N one cell each (by descending score)", pixel_size, overwrite)
    write_label_tiff(paths["parts"], prediction.parts.astype(np.uint8), parts_info, pixel_size, overwrite)
    masks = prediction.cell_masks() if rois or geojson else []
    if rois:
        write_rois(paths["rois"], masks, overwrite)
    if geojson:
        write_geojson(paths["geojson"], cell_features(masks, part_names, prediction.table, prediction.name),
                      overwrite)
    if overlays and prediction.image is not None:  # a field predicted in tiles is never held whole
        write_overlay(paths["overlay"], prediction.image, prediction.cells, prediction.parts, part_names, overwrite)
    elif overlays:
        del paths["overlay"]
    return paths
