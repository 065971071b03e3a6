"""Writing a synthetic field as image and label files."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.files import atomic_write

__all__ = ["write_field"]

logger = logging.getLogger(__name__)


def _label_dtype(labels: np.ndarray) -> type:
    """The smallest type ImageJ reads that holds ``labels`` exactly: uint16, else float32 (integers to 2**24)."""
    top = int(labels.max(initial=0))
    if labels.size and int(labels.min()) < 0:
        raise ValueError("cell labels must be non-negative")
    if top <= np.iinfo(np.uint16).max:
        return np.uint16
    if top <= 2 ** 24:
        return np.float32  # ImageJ has no 32-bit integer images; float32 holds every label up to 2**24
    raise ValueError(f"{top} cell labels do not fit an ImageJ TIFF (at most {2 ** 24})")


def write_field(folder_or_path: str | os.PathLike, field: dict[str, Any], name: str = "field",
                pixel_size: float | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Save a field (from :func:`synthetic_field`) as ImageJ TIFFs in the ``cells+parts`` layout.

    Writes ``<name>.tif`` (the image as an uncompressed, contiguous ImageJ hyperstack, axes ``CYX``, which
    ``tifffile.memmap`` maps without reading it), ``<name>_cells.tif`` (instance labels: uint16 when they fit,
    else float32, exact up to 2**24 labels) and ``<name>_masks.tif`` (uint8 part map), each atomically. A
    folder of such fields trains with ``--encoding cells+parts`` (default ``--mask-suffix _masks`` and
    ``--cells-suffix _cells``), for example with ``--crop 256 --channels 0,1``.

    Parameters
    ----------
    folder_or_path : str or PathLike
        A folder (created if missing), or the image's path ending in ``.tif``, whose stem then replaces ``name``.
    field : dict
        ``image`` ``[C, H, W]`` or ``[H, W]`` (uint8, uint16 or float32), ``cells`` integer ``[H, W]``,
        ``parts`` integer ``[H, W]``; optional ``info`` (a string stored in the image's ImageJ metadata) and
        ``channels`` (channel names, shown by Fiji).
    name : str
        Stem of the three files.
    pixel_size : float, optional
        Micrometres per pixel, stored as the resolution with unit micron (Fiji then measures in microns).
    overwrite : bool
        Replace existing files; without it nothing is written when any of the three exists.

    Returns
    -------
    dict
        ``image``, ``cells`` and ``parts``: the paths written.

    Raises
    ------
    FileExistsError
        One of the files exists and ``overwrite`` is False.
    ValueError
        Arrays of the wrong shape or type, or a pixel size that is not a positive number.
    """
    import tifffile

    path = Path(folder_or_path)
    if path.suffix.lower() in (".tif", ".tiff"):
        folder, name = path.parent, path.stem
    else:
        folder, path = path, path / f"{name}.tif"
    paths = {"image": path, "cells": folder / f"{name}_cells.tif", "parts": folder / f"{name}_masks.tif"}
    image, cells, parts = (np.asarray(field[k]) for k in ("image", "cells", "parts"))
    if image.ndim not in (2, 3) or image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"image must be [C, H, W] or [H, W] of uint8, uint16 or float32, got {image.dtype} "
                         f"{image.shape}")
    if cells.shape != image.shape[-2:] or parts.shape != image.shape[-2:]:
        raise ValueError(f"cells {cells.shape} and parts {parts.shape} must match the image's {image.shape[-2:]}")
    if cells.dtype.kind not in "ui" or parts.dtype.kind not in "ui" or parts.size and not (
            0 <= int(parts.min()) and int(parts.max()) <= 255):
        raise ValueError(f"cells and parts must hold integer labels (parts 0..255), got {cells.dtype} and "
                         f"{parts.dtype}")
    cells_dtype = _label_dtype(cells)
    extra: dict[str, Any] = {}
    units: dict[str, Any] = {}
    if pixel_size is not None:
        if not (isinstance(pixel_size, (int, float)) and math.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"pixel_size must be a positive number of micrometres, got {pixel_size!r}")
        extra["resolution"] = (1.0 / pixel_size, 1.0 / pixel_size)
        units["unit"] = "micron"
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist(s); pass overwrite to replace them")
    folder.mkdir(parents=True, exist_ok=True)

    metadata = {"axes": "CYX" if image.ndim == 3 else "YX", **units}
    if field.get("info"):
        metadata["Info"] = str(field["info"])
    if field.get("channels") and image.ndim == 3 and len(field["channels"]) == image.shape[0]:
        metadata["Labels"] = [str(c) for c in field["channels"]]
    # Uncompressed and contiguous: tifffile.memmap (and ImageJ's virtual stacks) map the pixels in place.
    atomic_write(paths["image"], lambda tmp: tifffile.imwrite(
        tmp, np.ascontiguousarray(image), imagej=True, metadata=metadata, compression=None,
        photometric="minisblack", **extra), overwrite=overwrite)
    for kind, array in (("cells", cells.astype(cells_dtype, copy=False)),
                        ("parts", parts.astype(np.uint8, copy=False))):
        atomic_write(paths[kind], lambda tmp, a=array: tifffile.imwrite(
            tmp, a, imagej=True, metadata={"axes": "YX", **units}, compression=None, **extra), overwrite=overwrite)
    logger.debug("wrote %s, %s and %s", *(p.name for p in paths.values()))
    return paths
