"""Reading microscopy images and label masks, and pairing them in a folder.

Every problem with a file raises :class:`DataError`, whose message names the file
and says what to do; scripts show it as one line, without a traceback.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from .config import DataConfig

__all__ = ["DataError", "Pair", "IMAGE_EXTENSIONS", "list_images", "read_raw", "read_image", "read_labels", "normalize_image",
           "map_part_values", "Matching", "match_files", "find_pairs", "read_classes_csv", "class_of", "atomic_write"]

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


def read_raw(path: Path) -> np.ndarray:
    """Read an image or mask file as stored (dtype and shape untouched); DataError if unreadable."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = tifffile.imread(path)
        else:
            from skimage.io import imread  # slow to import; only needed for non-TIFF files

            array = np.asarray(imread(path))
        if array.size == 0:
            raise ValueError("no image data in the file")
        return array
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # readers raise many types for corrupt or truncated files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "backend" in reason:  # imageio's way of saying that no reader recognises the content
            reason = "no image reader recognises its content"
        raise DataError(f"{path}: cannot read the file ({reason}); it may be corrupt or truncated: "
                        f"export it again or remove it from the folder") from None


def normalize_image(array: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8), name: str = "image") -> np.ndarray:
    """Scale an image to float32 ``[H, W, 3]`` in [0, 1].

    8-bit images are divided by 255. 16-bit, integer and float images are scaled per
    channel so the low and high percentiles map to 0 and 1, then clipped; a constant
    channel becomes 0. Grayscale is repeated to three channels, two channels get a
    zero third, an alpha channel is dropped. Channels may come first or last.

    Parameters
    ----------
    array : np.ndarray
        ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` with ``C <= 4``.
    percentiles : tuple of float
        Low and high percentile for non-8-bit images.
    name : str
        Used in error messages (the file name).
    """
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype.kind not in "uif":
        raise DataError(f"{name}: unsupported pixel type {array.dtype}; save it as 8- or 16-bit integers or floats")
    if array.ndim == 3 and array.shape[0] <= 4 < array.shape[-1]:
        array = np.moveaxis(array, 0, -1)  # channels first, as ImageJ writes them
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] > 4:
        raise DataError(f"{name}: shape {array.shape} is not a 2-D image with up to 4 channels; split z-stacks "
                        f"or time series into single images and keep at most 3 channels")
    if array.shape[-1] == 4:
        array = array[..., :3]  # RGBA: drop alpha
    if array.dtype == np.uint8:
        image = array.astype(np.float32) / 255.0
    else:
        data = array.astype(np.float32)
        if not np.isfinite(data).all():
            raise DataError(f"{name}: contains NaN or infinite pixels; replace them before training")
        lo, hi = np.percentile(data, percentiles, axis=(0, 1))
        scale = np.where(hi > lo, hi - lo, 1.0)
        image = np.clip((data - lo) / scale, 0.0, 1.0) * (hi > lo)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 2:
        image = np.concatenate([image, np.zeros_like(image[..., :1])], axis=-1)
    return np.ascontiguousarray(image, dtype=np.float32)


def read_image(path: str | os.PathLike, percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """Read an image file (TIFF, PNG, BMP, JPEG) as float32 ``[H, W, 3]`` in [0, 1].

    See :func:`normalize_image` for the scaling.
    """
    path = Path(path)
    return normalize_image(read_raw(path), percentiles, name=str(path))


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
                        f"{list(part_values)}; fix --part-values, or pass --snap-values to map each to the nearest")
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
                        f"check the folder and the image pattern (--image-glob)")
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
                        f"narrow them down with --mask-glob")
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
                        f"({config.mask_glob!r}); check the folder and --image-glob")
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
            raise DataError(f"{image}: {problem}; add it, fix --mask-glob/--mask-suffix, "
                            f"or pass --skip-unpaired to leave such images out")
        logger.warning("skipping %s: %s", image, problem)
    if not matching.pairs:
        raise DataError(f"{folder}: no image has a mask; check --mask-glob and --mask-suffix")
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
