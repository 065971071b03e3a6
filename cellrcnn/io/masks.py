"""Label masks: reading them, mapping mask values to part indices, and one cell's whole mask."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..config.fields import MAX_PIXELS
from .files import DataError, is_zarr, read_raw

__all__ = ["read_labels", "map_part_values", "CellMask", "cell_masks_from_labels", "cell_masks_from_instances"]


@dataclass(frozen=True)
class CellMask:
    """One cell's whole mask, in its box: overlaps with other cells kept.

    Attributes
    ----------
    y0, x0 : int
        The image pixel of the box's top-left corner.
    parts : np.ndarray
        uint8 ``[h, w]`` part labels of the box: 0 outside the cell, 1 cytoplasm, 2.. the other parts.
    """

    y0: int
    x0: int
    parts: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """bool ``[h, w]``: the cell's pixels in its box."""
        return self.parts > 0

    @property
    def box(self) -> tuple[slice, slice]:
        """The box as slices of the image."""
        h, w = self.parts.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """uint8 ``[H, W]`` part labels of the cell in an image of ``shape`` (the box clipped to it)."""
        out = np.zeros(shape, dtype=np.uint8)
        rows, cols = self.box
        view = out[rows, cols]
        view[...] = self.parts[:view.shape[0], :view.shape[1]]
        return out


def cell_masks_from_labels(cells: np.ndarray, parts: np.ndarray) -> list[CellMask]:
    """The masks of cells 1..N of an integer ``[H, W]`` label image (a label absent gives an empty mask), with
    their parts from uint8 ``[H, W]`` ``parts``; a cell pixel labelled background in ``parts`` counts as
    cytoplasm. Each cell is its label-image remainder: overlaps are already resolved there."""
    masks = []
    for label, box in enumerate(ndimage.find_objects(np.asarray(cells, dtype=np.int64)), start=1):
        if box is None:
            masks.append(CellMask(0, 0, np.zeros((0, 0), dtype=np.uint8)))
            continue
        own = cells[box] == label
        masks.append(CellMask(box[0].start, box[1].start, np.where(own, np.maximum(parts[box], 1), 0).astype(np.uint8)))
    return masks


def cell_masks_from_instances(instances: np.ndarray) -> list[CellMask]:
    """The masks of uint8 ``[N, H, W]`` per-cell part maps (0 outside the cell), each cropped to its box."""
    masks = []
    for own in instances:
        rows, cols = np.flatnonzero(own.any(axis=1)), np.flatnonzero(own.any(axis=0))
        if not len(rows):
            masks.append(CellMask(0, 0, np.zeros((0, 0), dtype=np.uint8)))
            continue
        masks.append(CellMask(int(rows[0]), int(cols[0]),
                              np.ascontiguousarray(own[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], dtype=np.uint8)))
    return masks


def read_labels(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a label mask as a 2-D int64 array.

    A mask saved as RGB(A) with equal colour channels is accepted (channel 0 is used). A header claiming
    more than ``max_pixels`` pixels is refused before anything is read (as for images, ``data.max_pixels``).
    """
    path = Path(path)
    array = read_raw(path, max_pixels)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and all(np.array_equal(array[..., 0], array[..., c]) for c in (1, 2)):
        array = array[..., 0]
    if array.ndim > 2 and is_zarr(path) and sum(n > 1 for n in array.shape) <= 2:  # NGFF labels: (t, c, z,) y, x
        array = array.reshape(array.shape[-2:])
    if array.ndim != 2:
        raise DataError(f"{path}: a mask must be a single-channel label image, got shape {array.shape}; "
                        f"save masks as grayscale")
    if array.dtype.kind == "f":
        if not np.all(np.mod(array, 1) == 0):
            raise DataError(f"{path}: mask holds fractional values; masks must hold integer labels")
    elif array.dtype.kind not in "uib":
        raise DataError(f"{path}: unsupported mask pixel type {array.dtype}; save masks as integers")
    return array.astype(np.int64)


def map_part_values(mask: np.ndarray, part_values: tuple[int, ...], snap: bool = False,
                    name: str = "mask") -> np.ndarray:
    """Turn mask pixel values into part indices: ``part_values[k]`` becomes ``k``.

    Parameters
    ----------
    mask : np.ndarray
        Integer ``[H, W]`` mask.
    part_values : tuple of int
        Pixel value of each part, background first.
    snap : bool
        Map any other value to the nearest declared value instead of failing.
    name : str
        The file name, for the error message.

    Returns
    -------
    np.ndarray
        uint8 ``[H, W]`` part indices.
    """
    values = np.asarray(part_values)
    present = np.unique(mask)
    unknown = np.setdiff1d(present, values)
    if len(unknown) and not snap:
        shown = ", ".join(map(str, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
        raise DataError(f"{name}: mask values {shown} are not among the declared part values "
                        f"{list(part_values)}; fix data.part_values, or set data.snap_values=True to map each to the "
                        f"nearest")
    lut_keys = present
    nearest = np.abs(lut_keys[:, None] - values[None, :]).argmin(axis=1)
    return nearest[np.searchsorted(lut_keys, mask)].astype(np.uint8)
