"""Reading microscopy images and label masks, and pairing them in a folder.

Every problem with a file raises :class:`DataError`, whose message names the file
and says what to do; scripts show it as one line, without a traceback.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from .config import DataConfig

__all__ = ["DataError", "Pair", "IMAGE_EXTENSIONS", "LEVEL_PIXELS", "list_images", "read_raw", "read_raw_axes",
           "select_channels", "three_channels", "normalize_image", "image_from_array", "read_image", "ImageField", "open_field",
           "field_from_array", "read_labels", "map_part_values", "Matching", "match_files", "find_pairs",
           "read_classes_csv", "class_of", "atomic_write", "safe_stem", "write_pair"]

logger = logging.getLogger(__name__)

#: File extensions read as images or masks.
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg")


class DataError(ValueError):
    """A data file or folder that cannot be used; the message names it and what to do."""


@dataclass(frozen=True)
class Pair:
    """One image with its mask files (``cells`` only for the instance encodings)."""

    image: Path
    parts: Path | None = None
    cells: Path | None = None
    nuclei: Path | None = None

    @property
    def name(self) -> str:
        return self.image.stem

    @property
    def masks(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.parts, self.cells, self.nuclei) if p is not None)


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
            from skimage.io import imread  # slow to import; only needed for non-TIFF files

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


# --- axes and channels --------------------------------------------------------------------------------

#: Axis letters that cellrcnn understands; any other axis longer than 1 makes the labels untrustworthy.
_KNOWN_AXES = "YXZTCS"
_STACKS = {"Z": ("a Z-stack of {n} planes", "planes"), "T": ("a time series of {n} frames", "frames")}


@dataclass(frozen=True)
class _Layout:
    """Where rows, columns, channels and planes lie in a stored array, and what to take from it.

    ``arrange(stored[index(...)])`` is the ``[h, w, C]`` window in the stored dtype: Z and T
    maximum-projected, the chosen channels in order. Every axis not named here has length 1.
    """

    ndim: int
    y: int
    x: int
    height: int
    width: int
    project: tuple[int, ...] = ()
    channel: int | None = None
    pick: tuple[int, ...] | None = None

    def index(self, y0: int, y1: int, x0: int, x1: int, ystep: int = 1, xstep: int = 1) -> tuple:
        """The index of a window of the stored array; chosen channels only, so a memory map reads no others."""
        index: list = [slice(None)] * self.ndim
        index[self.y], index[self.x] = slice(y0, y1, ystep), slice(x0, x1, xstep)
        if self.pick is not None and self.channel is not None:
            index[self.channel] = list(self.pick)  # the only advanced index: the axis stays in place
        return tuple(index)

    def arrange(self, window: np.ndarray) -> np.ndarray:
        """``[h, w, C]`` from ``stored[self.index(...)]``."""
        if self.project:
            window = window.max(axis=self.project, keepdims=True)
        first = [self.channel] if self.channel is not None else []
        order = first + [self.y, self.x]
        order += [i for i in range(self.ndim) if i not in order]  # all of length 1 by now
        count = window.shape[self.channel] if self.channel is not None else 1
        window = window.transpose(order).reshape(count, window.shape[self.y], window.shape[self.x])
        return np.moveaxis(window, 0, -1)


def _guess_layout(shape: tuple[int, ...], axes: str | None, name: str) -> tuple[int, int, int | None]:
    """Rows, columns and channel axis of an array whose axes are unknown or untrustworthy.

    tifffile labels the last two axes of a file written without axes ``YX`` whatever they hold, so
    only the shape can tell: 2-D is ``YX``; 3-D is channels first (``CYX``) when the first axis is
    at most 4 and shorter than the other two, channels last (``YXC``) likewise with the last.
    """
    kept = [i for i, n in enumerate(shape) if n > 1]
    if len(kept) < 2:
        kept = list(range(len(shape)))[-2:]  # a 1-pixel-wide image: its last two axes
    if len(kept) == 2:
        return kept[0], kept[1], None
    if len(kept) == 3:
        a, b, c = (shape[i] for i in kept)
        if a <= 4 and a < min(b, c):
            return kept[1], kept[2], kept[0]
        if c <= 4 and c < min(a, b):
            return kept[0], kept[1], kept[2]
    if axes is None:
        raise DataError(f"{name}: shape {tuple(shape)} is not a 2-D image with up to 4 channels first or last; "
                        f"give select_channels its axes (such as 'ZCYX'), or split it into 2-D images")
    raise DataError(f"{name}: shape {tuple(shape)} (axes {axes}) is not a 2-D image with up to 4 channels, and "
                    f"the file does not say which axes are planes, frames or channels; save it as an ImageJ hyperstack or "
                    f"OME-TIFF (then data.projection='max' and data.channels apply), or as single 2-D images")


def _layout(shape: tuple[int, ...], axes: str | None, channels: tuple[int, ...] | None, projection: str,
            name: str) -> _Layout:
    """Check an array's axes against the channel and projection settings; see :func:`select_channels`."""
    shape = tuple(int(n) for n in shape)
    if axes is not None:
        axes = axes.upper()
        if len(axes) != len(shape):
            raise DataError(f"{name}: axes {axes!r} do not match the shape {shape}; give one letter per axis")
    if projection not in ("none", "max"):
        raise ValueError(f"projection must be 'none' or 'max', got {projection!r}")
    trusted = (axes is not None and "Y" in axes and "X" in axes
               and all(a in _KNOWN_AXES or n == 1 for a, n in zip(axes, shape)))
    project: tuple[int, ...] = ()
    if trusted:
        for letter, (what, items) in _STACKS.items():
            n = shape[axes.index(letter)] if letter in axes else 1
            if n > 1 and projection != "max":
                raise DataError(f"{name}: {what.format(n=n)} (axes {axes}); cellrcnn segments 2-D images: "
                                f"set data.projection='max' for the maximum projection, or save single {items}")
        project = tuple(i for i, a in enumerate(axes) if a in "ZT" and shape[i] > 1)
        y, x = axes.index("Y"), axes.index("X")
        colour = [i for i, a in enumerate(axes) if a in "CS" and shape[i] > 1]
        if len(colour) > 1:
            raise DataError(f"{name}: {shape[colour[0]]} channels of {shape[colour[1]]} colour samples each "
                            f"(axes {axes}); save each channel as a grayscale plane, or the image as plain RGB")
        channel = colour[0] if colour else None
    else:
        y, x, channel = _guess_layout(shape, axes, name)
    count = shape[channel] if channel is not None else 1
    if channels is not None:
        channels = tuple(int(c) for c in channels)
        bad = [c for c in channels if not 0 <= c < count]
        if bad:
            have = f"{count} channel{'s' if count > 1 else ''} ({'0' if count == 1 else f'0-{count - 1}'})"
            raise DataError(f"{name}: has {have}; data.channels='{','.join(map(str, channels))}' asks for "
                            f"channel {bad[0]}")
    elif count > 4:
        raise DataError(f"{name}: has {count} channels; choose up to 3 with data.channels (counted from 0, "
                        f"such as data.channels='0,1')")
    pick = channels if channels is not None and channel is not None else None
    return _Layout(len(shape), y, x, shape[y], shape[x], project, channel, pick)


def select_channels(array: np.ndarray, axes: str | None = None, channels: tuple[int, ...] | None = None,
                    projection: str = "none", name: str = "image") -> np.ndarray:
    """A stored image as ``[H, W, C]`` in its own dtype: planes and frames projected, channels chosen.

    Parameters
    ----------
    array : np.ndarray
        The pixels as stored, such as ``[Z, C, Y, X]``.
    axes : str, optional
        One tifffile letter per axis of ``array`` (``"YX"``, ``"YXS"``, ``"CYX"``,
        ``"ZCYX"``, ``"TZCYX"``...; ``C`` and ``S`` hold channels, ``Z`` planes,
        ``T`` frames). None, or axes with an unknown letter (``Q``, ``I``) of length
        over 1: judged by the shape alone, ``[H, W]``, ``[C, H, W]`` or
        ``[H, W, C]`` with ``C <= 4`` shorter than ``H`` and ``W``.
    channels : tuple of int, optional
        Channels to keep, in the order wanted (0-based; ``(1, 0)`` puts channel 1
        first). None keeps all, which must be at most 4.
    projection : {"none", "max"}
        ``"none"`` refuses a Z-stack or time series; ``"max"`` takes the maximum
        over planes and frames.
    name : str
        The file name, for error messages.

    Returns
    -------
    np.ndarray
        ``[H, W, C]``, C at most 4, the dtype of ``array``.

    Raises
    ------
    DataError
        A stack without ``projection="max"``, axes that cannot be told apart,
        a channel out of range, or more than 4 channels without ``channels``.
    """
    array = np.asarray(array)
    layout = _layout(array.shape, axes, channels, projection, name)
    return layout.arrange(array[layout.index(0, layout.height, 0, layout.width)])


# --- levels and scaling -------------------------------------------------------------------------------

def _pixels(image: np.ndarray, name: str) -> np.ndarray:
    """``[h, w, C]`` pixels ready for :func:`_levels`: bool as 8-bit, alpha dropped, odd types refused."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype.kind not in "uif":
        raise DataError(f"{name}: unsupported pixel type {image.dtype}; save it as 8- or 16-bit integers or floats")
    if image.shape[-1] == 4:
        image = image[..., :3]  # RGBA: drop alpha
    return image


def _check_finite(data: np.ndarray, name: str) -> None:
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataError(f"{name}: contains NaN or infinite pixels; replace them before training")


def _levels(image: np.ndarray, percentiles: tuple[float, float], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 ``(low, high)`` of :func:`_pixels` output (a whole image or a sample of it).

    8-bit: 0 and 255. Other types: the ``percentiles`` of each channel.
    """
    count = image.shape[-1]
    if image.dtype == np.uint8:
        return np.zeros(count, np.float32), np.full(count, 255.0, np.float32)
    low, high = np.zeros(count, np.float32), np.zeros(count, np.float32)
    for c in range(count):  # one channel at a time: one float copy alive, partitioned in place
        data = image[..., c].astype(np.float32)
        _check_finite(data, name)
        low[c], high[c] = np.percentile(data, percentiles, overwrite_input=True)
    return low, high


def _scale(image: np.ndarray, low: np.ndarray, high: np.ndarray, name: str) -> np.ndarray:
    """:func:`_pixels` output mapped through the levels to float32 ``[h, w, 3]`` in [0, 1].

    ``low`` becomes 0, ``high`` 1, values beyond are clipped, a constant channel
    (``high == low``) becomes 0; channels are completed to three by :func:`three_channels`.
    """
    data = image.astype(np.float32)
    _check_finite(data, name)
    span = high - low
    data -= low
    data /= np.where(span > 0, span, np.float32(1))
    np.clip(data, 0.0, 1.0, out=data)
    data *= span > 0
    return np.ascontiguousarray(three_channels(data), dtype=np.float32)


def three_channels(data: np.ndarray) -> np.ndarray:
    """``[h, w, C]`` (C of 1 to 3) as the network's three channels: one repeated, two with a zero third (zeros,
    not a copy of either, so the network sees which channel is which), three as they are."""
    if data.shape[-1] == 1:
        return np.repeat(data, 3, axis=-1)
    if data.shape[-1] == 2:
        return np.concatenate([data, np.zeros_like(data[..., :1])], axis=-1)
    return data


def _normalize(image: np.ndarray, percentiles: tuple[float, float], name: str) -> np.ndarray:
    """Levels of the whole ``[H, W, C]`` image, then scaled by them."""
    image = _pixels(image, name)
    return _scale(image, *_levels(image, percentiles, name), name)


def normalize_image(array: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8), name: str = "image") -> np.ndarray:
    """Scale an image to float32 ``[H, W, 3]`` in [0, 1].

    8-bit images are divided by 255. 16-bit, integer and float images are scaled per
    channel so the low and high percentiles map to 0 and 1, then clipped; a constant
    channel becomes 0. Grayscale is repeated to three channels, two channels get a
    zero third (zeros, not a copy of either), an alpha channel is dropped. Channels
    may come first or last. To choose channels or project a stack, use
    :func:`image_from_array`.

    Parameters
    ----------
    array : np.ndarray
        ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` with ``C <= 4``.
    percentiles : tuple of float
        Low and high percentile for non-8-bit images.
    name : str
        Used in error messages (the file name).
    """
    return _normalize(select_channels(array, None, None, "none", name), percentiles, name)


def _config(config: DataConfig | None, caller: str) -> DataConfig:
    if config is None:
        return DataConfig()
    if not isinstance(config, DataConfig):
        raise TypeError(f"{caller} takes a DataConfig (such as DataConfig(percentiles=(1, 99.8), channels=(1, 0))), "
                        f"got {config!r}")
    return config


def image_from_array(array: np.ndarray, config: DataConfig | None = None, name: str = "image",
                     axes: str | None = None) -> np.ndarray:
    """What :func:`read_image` makes of a file, for pixels already in memory.

    Parameters
    ----------
    array : np.ndarray
        The pixels as stored; see :func:`select_channels`.
    config : DataConfig, optional
        Its ``channels``, ``projection`` and ``percentiles`` apply; None: the defaults.
    name : str
        Used in error messages.
    axes : str, optional
        One letter per axis of ``array``; None: judged by the shape.

    Returns
    -------
    np.ndarray
        float32 ``[H, W, 3]`` in [0, 1], scaled as :func:`normalize_image` says.
    """
    config = _config(config, "image_from_array")
    return _normalize(select_channels(array, axes, config.channels, config.projection, name), config.percentiles, name)


def read_image(path: str | os.PathLike, config: DataConfig | None = None) -> np.ndarray:
    """Read an image file (TIFF, PNG, BMP, JPEG) as float32 ``[H, W, 3]`` in [0, 1].

    A TIFF's axes (ImageJ hyperstack, OME-TIFF) say which are channels, planes
    and frames; see :func:`select_channels` for the choice of channels and the
    projection, :func:`normalize_image` for the scaling.

    Parameters
    ----------
    path : str or PathLike
        The image file.
    config : DataConfig, optional
        Its ``channels``, ``projection`` and ``percentiles`` apply; None: the defaults.
    """
    config = _config(config, "read_image")
    path = Path(path)
    array, axes = read_raw_axes(path)
    return image_from_array(array, config, str(path), axes)


# --- windowed reading ---------------------------------------------------------------------------------

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
        True when read through a memory map (uncompressed TIFF).
    """

    path: Path | None
    name: str
    shape: tuple[int, int]
    mapped: bool

    def __init__(self, source, layout: _Layout, config: DataConfig, name: str, path: Path | None = None,
                 mapped: bool = False, label: str | None = None) -> None:
        self._source, self._layout = source, layout
        self._label = label or name  # in error messages: the full path when there is one
        self.path, self.name, self.mapped = path, name, mapped
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
    dtype = np.dtype(byteorder + series.dtype.char)
    if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
        return None  # truncated: reading it whole says so
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
    if _is_tiff(path):
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes = series.axes
                source = _mappable(path, series, tif.byteorder)
        except Exception as err:  # readers raise many types for corrupt or truncated files
            raise _unreadable(path, err) from None
    if source is None:
        source, axes = read_raw_axes(path)
        log = logger.info if source.size > LEVEL_PIXELS else logger.debug
        log("%s: not an uncompressed TIFF, read whole into memory (%d MB)", path, source.nbytes // 2**20)
    layout = _layout(source.shape, axes, config.channels, config.projection, str(path))
    return ImageField(source, layout, config, path.stem, path, isinstance(source, _Mapped), str(path))


def field_from_array(array: np.ndarray, config: DataConfig | None = None, name: str = "image") -> ImageField:
    """An :class:`ImageField` over pixels in memory (``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``).

    Parameters
    ----------
    array : np.ndarray
        The pixels; see :func:`select_channels` (use it first for other axes).
    config : DataConfig, optional
        Its ``channels``, ``projection`` and ``percentiles`` apply; None: the defaults.
    name : str
        The field's name, used in error messages.
    """
    config = _config(config, "field_from_array")
    array = np.asarray(array)
    layout = _layout(array.shape, None, config.channels, config.projection, name)
    return ImageField(array, layout, config, name)


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


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(path: str | os.PathLike, glob: str = "*", skip_suffixes: tuple[str, ...] = ()) -> list[Path]:
    """The image files a command reads: ``path`` itself, or the images of the folder ``path``.

    Files of a folder count when their extension is one of :data:`IMAGE_EXTENSIONS`,
    their name matches ``glob`` and does not start with a dot, and their stem does
    not end with one of ``skip_suffixes`` (masks, or results written there), in
    name order.

    Raises
    ------
    DataError
        ``path`` does not exist, or the folder holds no such image.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    found = [p for p in sorted(path.iterdir()) if _is_image_file(p) and fnmatch.fnmatch(p.name, glob)
             and not (skip_suffixes and p.stem.endswith(tuple(skip_suffixes)))]
    if not found:
        raise DataError(f"{path}: no images matching {glob!r} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                        f"check the folder and the image pattern (data.image_glob)")
    return found


def _mask_index(folder: Path, glob: str) -> dict[str, list[Path]]:
    """The folder's image files matching ``glob``, by stem: listed once, not once per image."""
    index: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if fnmatch.fnmatch(path.name, glob) and _is_image_file(path):
            index.setdefault(path.stem, []).append(path)
    return index


def _find_mask(stem: str, suffix: str, index: dict[str, list[Path]], exclude: Path | None,
               required_suffix: bool) -> Path | None:
    """The mask of ``stem`` in a :func:`_mask_index`: ``<stem><suffix>.*`` or, unless the suffix is required,
    ``<stem>.*``."""
    with_suffix = [p for p in index.get(stem + suffix, []) if p != exclude]
    plain = [] if required_suffix else [p for p in index.get(stem, []) if p != exclude]
    found = with_suffix or plain
    if len(found) > 1:
        raise DataError(f"{found[0].parent}: several masks for {stem}: {', '.join(p.name for p in found)}; "
                        f"narrow them down with data.mask_glob")
    return found[0] if found else None


@dataclass
class Matching:
    """Result of :func:`match_files`: the pairs found, and images lacking a mask."""

    pairs: list[Pair]
    unpaired: list[tuple[Path, str]]  # image, and what is missing in words


def match_files(folder: str | os.PathLike, config: DataConfig) -> Matching:
    """Pair every image of ``folder`` with its mask file(s); see :func:`find_pairs`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    if (folder / "images").is_dir():
        image_dir, mask_dir = folder / "images", folder / "masks"
        if not mask_dir.is_dir():
            raise DataError(f"{folder}: has images/ but no masks/ folder; put the masks in {mask_dir}")
    else:
        image_dir = mask_dir = folder
    same_folder = image_dir == mask_dir
    # A mask may share the image's stem unless image and mask live in one folder with nothing to tell them apart.
    plain_ok = not same_folder or config.mask_glob != "*"
    suffixes = (config.mask_suffix, config.cells_suffix, config.nuclei_suffix)
    images = [p for p in list_images(image_dir, config.image_glob, suffixes)
              if not (same_folder and config.mask_glob != "*" and fnmatch.fnmatch(p.name, config.mask_glob))]
    if not images:
        raise DataError(f"{image_dir}: no images matching {config.image_glob!r} apart from the masks "
                        f"({config.mask_glob!r}); check the folder and data.image_glob")
    wanted = {"parts": ("parts",), "cells+parts": ("parts", "cells"), "cells+nuclei": ("cells", "nuclei")}
    suffix = {"parts": config.mask_suffix, "cells": config.cells_suffix, "nuclei": config.nuclei_suffix}
    matching = Matching([], [])
    index = _mask_index(mask_dir, config.mask_glob)
    for image in images:
        files = {
            kind: _find_mask(image.stem, suffix[kind], index, image if same_folder else None,
                             required_suffix=kind != "parts" or not plain_ok)
            for kind in wanted[config.encoding]
        }
        absent = [k for k, v in files.items() if v is None]
        if absent:
            expected = " and ".join(f"{image.stem}{suffix[k]}.*" for k in absent)
            matching.unpaired.append((image, f"no {' or '.join(absent)} mask in {mask_dir} (expected {expected})"))
        else:
            matching.pairs.append(Pair(image=image, **files))
    return matching


def find_pairs(folder: str | os.PathLike, config: DataConfig) -> list[Pair]:
    """Pair every image of ``folder`` with its mask file(s).

    Layouts:

    (a) ``folder/images/`` and ``folder/masks/``, matched by stem;
    (b) one folder, masks named ``<stem><mask_suffix>`` (``cell_001_masks.tif``);
    (c) one folder, image and mask sharing a stem and told apart by
        ``image_glob`` and ``mask_glob`` (``001.bmp`` and ``001.png``).

    An image without its mask is an error, or is skipped with a warning when
    ``config.skip_unpaired`` is set.

    Returns
    -------
    list of Pair
        Sorted by image name.
    """
    matching = match_files(folder, config)
    for image, problem in matching.unpaired:
        if not config.skip_unpaired:
            raise DataError(f"{image}: {problem}; add it, fix data.mask_glob or data.mask_suffix, "
                            f"or set data.skip_unpaired=True to leave such images out")
        logger.warning("skipping %s: %s", image, problem)
    if not matching.pairs:
        raise DataError(f"{folder}: no image has a mask; check data.mask_glob and data.mask_suffix")
    return matching.pairs


def read_classes_csv(path: str | os.PathLike, num_classes: int) -> dict[str, int]:
    """Read ``image ID, class label`` rows (a header line is allowed) into ``{id: label}``.

    IDs are compared with image stems as text and, when both are numbers, as numbers
    (``1`` matches ``001.bmp``). Labels must be integers ``1..num_classes``.
    """
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except OSError as err:
        raise DataError(f"{path}: cannot read the classes CSV ({err})") from None
    classes: dict[str, int] = {}
    for line, row in enumerate(rows, 1):
        if len(row) < 2:
            raise DataError(f"{path}, line {line}: expected 'image ID,class label', got {','.join(row)!r}")
        key, value = row[0].strip(), row[1].strip()
        try:
            label = int(value)
        except ValueError:
            if line == 1:
                continue  # header
            raise DataError(f"{path}, line {line}: class label {value!r} is not an integer") from None
        if not 1 <= label <= num_classes:
            raise DataError(f"{path}, line {line}: class label {label} is outside 1..{num_classes}; "
                            f"set the class names (one per class) to match")
        classes[_id_key(key)] = label
    return classes


def _id_key(text: str) -> str:
    return str(int(text)) if text.isdigit() else text


def class_of(classes: dict[str, int], name: str, csv_path: str) -> int:
    """The class of image ``name`` (its stem) in a table read by :func:`read_classes_csv`."""
    try:
        return classes[_id_key(name)]
    except KeyError:
        raise DataError(f"{csv_path}: no class for image {name}; add a row '{name},<class>'") from None


def atomic_write(path: str | os.PathLike, write, overwrite: bool = False) -> Path:
    """Write a file through ``write(tmp_path)`` then rename it into place.

    A crash never leaves a half-written ``path``, and an existing file is only
    replaced with ``overwrite=True``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite to replace it")
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def safe_stem(name: str) -> str:
    """``name`` as a file stem: characters other than letters, digits, ``-`` and ``_`` become ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "image"


def write_pair(folder: str | os.PathLike, name: str, image: np.ndarray, parts: np.ndarray,
               overwrite: bool = False) -> Pair:
    """Write an image and its part-label mask as a training pair: ``<name>.tif`` and ``<name>_masks.tif``.

    For training on pixels held in memory (napari layers): the folder then
    reads with the default :class:`~cellrcnn.DataConfig` (``encoding="parts"``,
    part values 0, 1, 2...).

    Parameters
    ----------
    folder : path
        Created if missing.
    name : str
        File stem; characters other than letters, digits, ``-`` and ``_`` become ``_``.
    image : np.ndarray
        ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` pixels, as stored.
    parts : np.ndarray
        Integer ``[H, W]`` part labels (0 background, 1 cytoplasm, 2 nucleus...).

    Raises
    ------
    DataError
        The mask is not 2-D integers, or its size differs from the image's.
    """
    image, parts = np.asarray(image), np.asarray(parts)
    shape = _layout(image.shape, None, None, "none", name)
    if parts.ndim != 2 or parts.dtype.kind not in "ui" or parts.shape != (shape.height, shape.width):
        raise DataError(f"{name}: the labels must be 2-D integers of the image's size {shape.height}x{shape.width}, "
                        f"got {parts.dtype} {parts.shape}")
    if parts.max(initial=0) > 255 or parts.min(initial=0) < 0:
        raise DataError(f"{name}: part labels must lie in 0..255 (0 background, 1 cytoplasm, 2 nucleus), "
                        f"got {parts.min()}..{parts.max()}")
    stem = safe_stem(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pair = Pair(image=folder / f"{stem}.tif", parts=folder / f"{stem}_masks.tif")
    atomic_write(pair.image, lambda tmp: tifffile.imwrite(tmp, image), overwrite=overwrite)
    atomic_write(pair.parts, lambda tmp: tifffile.imwrite(tmp, parts.astype(np.uint8)), overwrite=overwrite)
    return pair
