"""Axis layouts: which axes are Y, X and channels, and stacks projected or refused."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .files import DataError

__all__ = ["select_channels"]


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
