"""Intensities: pixels checked, scaled to [0, 1] and made three-channel, from arrays or files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config.data import DataConfig
from .files import DataError, read_raw_axes
from .layouts import select_channels

__all__ = ["three_channels", "normalize_image", "image_from_array", "read_image"]


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
        raise DataError(f"{name}: contains NaN or infinite pixels; replace them (in Fiji: Process > Noise > "
                        f"Remove NaNs) and save the image again")


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
    array, axes = read_raw_axes(path, config.max_pixels)
    return image_from_array(array, config, str(path), axes)
