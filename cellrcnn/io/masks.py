"""Label masks: reading them, and mapping mask values to part indices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import DataError, read_raw

__all__ = ["read_labels", "map_part_values"]


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label mask as a 2-D int64 array.

    A mask saved as RGB(A) with equal colour channels is accepted (channel 0 is used).
    """
    path = Path(path)
    array = read_raw(path)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and all(np.array_equal(array[..., 0], array[..., c]) for c in (1, 2)):
        array = array[..., 0]
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
