"""Reading image files: the formats read, the one error type, and raw pixels with their axes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["DataError", "IMAGE_EXTENSIONS", "read_raw", "read_raw_axes"]


#: File extensions read as images or masks.
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg")


class DataError(ValueError):
    """A data file or folder that cannot be used; the message names it and what to do."""


def _unreadable(path: Path, err: Exception) -> DataError:
    """The DataError for a file that no reader can decode."""
    if isinstance(err, FileNotFoundError):
        return DataError(f"{path}: file not found")
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "backend" in reason:  # imageio's way of saying that no reader recognises the content
        reason = "no image reader recognises its content"
    return DataError(f"{path}: cannot read the file ({reason}); it may be corrupt or truncated: "
                     f"export it again or remove it from the folder")


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def read_raw_axes(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Read an image file as stored, with the name of each axis.

    Axes use tifffile's letters: ``Y`` and ``X`` (rows, columns), ``C``
    (channels), ``S`` (colour samples), ``Z`` (planes), ``T`` (frames), ``Q``
    or ``I`` (unknown). A TIFF's axes are those of its first series (ImageJ
    hyperstack, OME-TIFF or tifffile metadata); other files are ``YX`` or ``YXS``.

    Returns
    -------
    array : np.ndarray
        The pixels, dtype and shape untouched.
    axes : str
        One letter per dimension of ``array``.

    Raises
    ------
    DataError
        The file is missing, unreadable or holds no pixels.
    """
    path = Path(path)
    try:
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                array, axes = series.asarray(), series.axes
        else:
            from skimage.io import (
                imread,  # slow to import; only needed for non-TIFF files
            )

            array = np.asarray(imread(path))
            axes = {2: "YX", 3: "YXS"}.get(array.ndim, "Q" * array.ndim)
        if array.size == 0:
            raise ValueError("no image data in the file")
    except Exception as err:  # readers raise many types for corrupt or truncated files
        raise _unreadable(path, err) from None
    return array, axes


def read_raw(path: str | os.PathLike) -> np.ndarray:
    """Read an image or mask file as stored (dtype and shape untouched); DataError if unreadable."""
    return read_raw_axes(path)[0]
