"""Whole fields of view: images too large for memory, read window by window."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import tifffile

from ..config.data import DataConfig
from .calibration import PixelSize, checked_pixel_size, pixel_size_of
from .files import DataError, _is_tiff, _unreadable, image_stem, is_zarr, open_zarr_array, read_raw_axes
from .intensity import _config, _levels, _pixels, _scale
from .layouts import _Layout, _layout

__all__ = ["LEVEL_PIXELS", "ImageField", "open_field", "field_from_array", "given_pixel_size"]

logger = logging.getLogger(__name__)


#: Images up to this many pixels get levels from every pixel, larger ones from a regular grid of at most this many.
LEVEL_PIXELS = 4_000_000
#: Bytes of the stored file spanned by one band while sampling levels.
_BAND_BYTES = 16 * 2**20


class _Mapped:
    """The stored array of an uncompressed TIFF, mapped afresh for every read.

    A memory map kept open keeps every page it has read resident (counted in the
    process's RSS) until the kernel needs the memory; unmapping after each read
    bounds the footprint whatever the height of the image. While mapped, a window
    costs about the file span of its rows (full width, every channel): the kernel
    maps whole page-cache folios, not just the bytes read.
    """

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.offset, self.dtype, self.shape = path, offset, dtype, shape

    def __getitem__(self, index: tuple) -> np.ndarray:
        mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.shape, "C")
        try:
            return np.array(mapped[index])  # a copy: nothing refers to the map once it is dropped
        finally:
            del mapped


class ImageField:
    """An image read window by window, normalised with levels of the whole image.

    Make one with :func:`open_field` or :func:`field_from_array`. Uncompressed
    TIFFs are memory-mapped, so reading a large field of view window by window
    keeps only the current window in memory; other files are read whole once.

    Levels (see :func:`normalize_image`) are computed once: 8-bit images are
    divided by 255; other types are scaled per channel between the
    ``percentiles`` of every pixel when the image has at most
    :data:`LEVEL_PIXELS` pixels, so ``field.read(0, H, 0, W)`` equals
    :func:`read_image` exactly, otherwise of a regular grid of about that many.

    Attributes
    ----------
    path : Path or None
        The file; None for an array.
    name : str
        The file's stem, or the name given.
    shape : tuple of int
        ``(H, W)`` in pixels.
    mapped : bool
        True when read window by window from the file (an uncompressed TIFF through a memory map, an
        OME-Zarr chunk by chunk).
    pixel_size : PixelSize or None
        Micrometres per pixel: ``data.pixel_size`` when set, else what the file states
        (:func:`~cellrcnn.io.calibration.pixel_size_of`); None when unknown.
    """

    path: Path | None
    name: str
    shape: tuple[int, int]
    mapped: bool
    pixel_size: PixelSize | None

    def __init__(self, source, layout: _Layout, config: DataConfig, name: str, path: Path | None = None,
                 mapped: bool = False, label: str | None = None, pixel_size: PixelSize | None = None) -> None:
        self._source, self._layout = source, layout
        self._label = label or name  # in error messages: the full path when there is one
        self.path, self.name, self.mapped, self.pixel_size = path, name, mapped, pixel_size
        self.shape = (layout.height, layout.width)
        self._low, self._high = _levels(self._level_sample(), config.percentiles, self._label)

    def __repr__(self) -> str:
        return f"ImageField({self.name!r}, shape={self.shape}, mapped={self.mapped})"

    def _raw(self, y0: int, y1: int, x0: int, x1: int, ystep: int = 1, xstep: int = 1) -> np.ndarray:
        layout = self._layout
        return _pixels(layout.arrange(self._source[layout.index(y0, y1, x0, x1, ystep, xstep)]), self._label)

    def _level_sample(self) -> np.ndarray:
        """Every pixel of a small image; a regular grid of at most LEVEL_PIXELS of a larger one, band by band."""
        H, W = self.shape
        ratio = H * W / LEVEL_PIXELS
        if ratio <= 1:
            return self._raw(0, H, 0, W)
        ystep = max(1, math.floor(math.sqrt(ratio)))
        xstep = math.ceil(ratio / ystep)
        # A band spans about _BAND_BYTES of the file whatever the step: the kernel maps whole page-cache
        # folios, so even rows skipped by the step count while the band is mapped.
        row_bytes = max(1, self._source_nbytes() // H)
        rows = max(1, _BAND_BYTES // row_bytes // ystep) * ystep  # a whole number of steps
        sample = None
        for y0 in range(0, H, rows):
            band = self._raw(y0, min(y0 + rows, H), 0, W, ystep, xstep)
            if sample is None:  # filled in place: no list of bands and no concatenated copy
                sample = np.empty((len(range(0, H, ystep)),) + band.shape[1:], band.dtype)
            sample[y0 // ystep:y0 // ystep + len(band)] = band
        return sample

    def _source_nbytes(self) -> int:
        source = self._source
        return int(np.prod(source.shape)) * np.dtype(source.dtype).itemsize

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The window of rows ``y0:y1`` and columns ``x0:x1``.

        Returns
        -------
        np.ndarray
            float32 ``[y1 - y0, x1 - x0, 3]`` in [0, 1].
        """
        H, W = self.shape
        if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
            raise ValueError(f"{self._label}: window rows {y0}:{y1}, columns {x0}:{x1} is not inside the "
                             f"{H}x{W} image")
        return _scale(self._raw(y0, y1, x0, x1), self._low, self._high, self._label)


def _mappable(path: Path, series, byteorder: str) -> _Mapped | None:
    """A :class:`_Mapped` of a series stored uncompressed in one piece, else None."""
    offset = series.dataoffset
    if offset is None or series.dtype is None:
        return None
    shape = tuple(series.shape)
    if not shape or min(shape) < 1:
        raise DataError(f"{path}: holds no pixels (shape {shape}); export it again")
    if not isinstance(offset, (int, np.integer)) or offset < 0:  # a damaged tag: reading it whole says what is wrong
        return None
    dtype = np.dtype(byteorder + series.dtype.char)
    need, have = offset + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize, path.stat().st_size
    if need > have:  # the header claims more pixels than the file holds
        raise DataError(f"{path}: truncated or damaged: its header describes {' x '.join(map(str, shape))} values "
                        f"({need:,} bytes) but the file holds {have:,} bytes; export it again")
    return _Mapped(path, offset, dtype, shape)


def open_field(path: str | os.PathLike, config: DataConfig | None = None) -> ImageField:
    """Open an image file for reading window by window; see :class:`ImageField`.

    Parameters
    ----------
    path : str or PathLike
        The image file; an uncompressed TIFF is memory-mapped, any other is read whole.
    config : DataConfig, optional
        Its ``channels``, ``projection`` and ``percentiles`` apply; None: the defaults.

    Raises
    ------
    DataError
        As :func:`read_image`, at opening (NaN pixels outside the level sample of
        a large float image: at the read that meets them).
    """
    config = _config(config, "open_field")
    path = Path(path)
    source = None
    pixel_size = given_pixel_size(config) or pixel_size_of(path)
    if is_zarr(path):  # read chunk by chunk, never whole
        source, axes = open_zarr_array(path)
        layout = _layout(tuple(source.shape), axes, config.channels, config.projection, str(path))
        return ImageField(source, layout, config, image_stem(path), path, True, str(path), pixel_size)
    if _is_tiff(path):
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes = series.axes
                source = _mappable(path, series, tif.byteorder)
        except DataError:
            raise
        except Exception as err:  # readers raise many types for corrupt or truncated files
            raise _unreadable(path, err) from None
    if source is None:
        source, axes = read_raw_axes(path, config.max_pixels)
        log = logger.info if source.size > LEVEL_PIXELS else logger.debug
        log("%s: not an uncompressed TIFF, read whole into memory (%d MB)", path, source.nbytes // 2**20)
    layout = _layout(source.shape, axes, config.channels, config.projection, str(path))
    return ImageField(source, layout, config, image_stem(path), path, isinstance(source, _Mapped), str(path),
                      pixel_size)


def given_pixel_size(config: DataConfig) -> PixelSize | None:
    """``data.pixel_size`` as a :class:`PixelSize` (``source="given"``), or None."""
    return None if config.pixel_size is None else checked_pixel_size(config.pixel_size, config.pixel_size, "given",
                                                                      "data.pixel_size")


def field_from_array(array: np.ndarray, config: DataConfig | None = None, name: str = "image",
                     pixel_size: PixelSize | None = None) -> ImageField:
    """An :class:`ImageField` over pixels in memory (``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``).

    Parameters
    ----------
    array : np.ndarray
        The pixels; see :func:`select_channels` (use it first for other axes).
    config : DataConfig, optional
        Its ``channels``, ``projection`` and ``percentiles`` apply; None: the defaults.
    name : str
        The field's name, used in error messages.
    pixel_size : PixelSize, optional
        Its pixel size; None: ``config.pixel_size``, if any.
    """
    config = _config(config, "field_from_array")
    array = np.asarray(array)
    layout = _layout(array.shape, None, config.channels, config.projection, name)
    return ImageField(array, layout, config, name, pixel_size=pixel_size or given_pixel_size(config))
