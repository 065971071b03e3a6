"""Folders of images and masks: listing, pairing, class tables and writing training pairs."""

from __future__ import annotations

import csv
import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ..config.data import DataConfig
from ..utils.files import atomic_write, safe_stem
from .coco import is_coco_file, read_coco
from .calibration import is_ome_zarr, ngff_image
from .files import IMAGE_EXTENSIONS, DataError, image_stem, is_zarr
from .layouts import _layout

__all__ = ["Pair", "list_images", "output_names", "Matching", "coco_file_of", "match_files", "find_pairs", "read_classes_csv",
           "class_of", "write_pair"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """One image with its mask files (``cells`` only for the instance encodings)."""

    image: Path
    parts: Path | None = None
    cells: Path | None = None
    nuclei: Path | None = None
    annotations: Path | None = None  # a COCO or GeoJSON file, for the "coco" and "geojson" encodings
    image_id: int | None = None  # the image's id in it

    @property
    def name(self) -> str:
        return image_stem(self.image)

    @property
    def masks(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.parts, self.cells, self.nuclei, self.annotations) if p is not None)


def _is_image_file(path: Path) -> bool:
    if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
        return False
    return is_zarr(path) if path.suffix.lower() == ".zarr" else path.is_file()


def list_images(path: str | os.PathLike, glob: str = "*", skip_suffixes: tuple[str, ...] = (),
                mask_glob: str | None = None) -> list[Path]:
    """The image files a command reads: ``path`` itself, or the images of the folder ``path``.

    Files of a folder count when their extension is one of :data:`IMAGE_EXTENSIONS`,
    their name matches ``glob`` and does not start with a dot, and their stem does
    not end with one of ``skip_suffixes`` (masks, or results written there), in
    name order. A folder laid out for training is read as training reads it: one
    holding only ``images/`` and ``masks/`` gives the files of ``images/``; and with
    ``mask_glob`` (the pattern that told masks from images in one folder, such as
    ``"*.png"`` beside ``001.bmp``), a file that matches it and shares its stem with
    an image that does not is a mask, left out.

    Raises
    ------
    DataError
        ``path`` does not exist, or the folder holds no such image.
    """
    path = Path(path)
    if path.is_file() or is_ome_zarr(path):  # an OME-Zarr image is a folder, and one image
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = [p for p in sorted(path.iterdir()) if _is_image_file(p)]
    if not files and (path / "images").is_dir():  # the images/ + masks/ layout
        return list_images(path / "images", glob, skip_suffixes)
    found = [p for p in files if fnmatch.fnmatch(p.name, glob)
             and not (skip_suffixes and p.stem.endswith(tuple(skip_suffixes)))]
    if mask_glob and mask_glob != "*":
        images = {p.stem for p in files if not fnmatch.fnmatch(p.name, mask_glob)}
        found = [p for p in found if not (fnmatch.fnmatch(p.name, mask_glob) and p.stem in images)]
    if not found:
        raise DataError(f"{path}: no images matching {glob!r} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                        f"check the folder and the image pattern (data.image_glob)")
    return found


def output_names(images: list[Path]) -> dict[Path, str]:
    """A distinct name for each image's results: its stem, or, where files of different folders share a
    stem, the stem after as many of its folders as tell them apart (``a/001.bmp``, ``b/001.bmp``:
    ``a_001``, ``b_001``).

    Parameters
    ----------
    images : list of Path
        Image files, each once.

    Returns
    -------
    dict of Path to str
        The names (stems, prefixed by folders where needed), in the order of ``images``.

    Raises
    ------
    DataError
        Two files of one folder share a stem (``001.tif`` and ``001.png``): their results would overwrite
        each other, and one of them is likely a mask.
    """
    by_stem: dict[str, list[Path]] = {}
    for image in images:
        by_stem.setdefault(image_stem(image), []).append(image)
    names = {image: image_stem(image) for image in images}
    for stem, same in by_stem.items():
        if len(same) < 2:
            continue
        folders = [p.resolve().parent for p in same]
        twins = [p for p, folder in zip(same, folders) if folders.count(folder) > 1]
        if twins:
            raise DataError(f"{twins[0].parent}: {twins[0].name} and {twins[1].name} share the name {stem}, so "
                            f"their results would overwrite each other; choose the images with data.image_glob "
                            f"(such as '*{twins[0].suffix}'), or rename one")
        for depth in range(1, max(len(f.parts) for f in folders) + 1):
            prefixes = ["_".join(f.parts[-depth:]).strip("/_") for f in folders]
            if len(set(prefixes)) == len(same):
                break
        names.update({p: f"{prefix}_{stem}" for p, prefix in zip(same, prefixes)})
    if len(set(names.values())) < len(names):  # a prefixed name met another file's stem: a rare tangle
        first = next(p for p in images if list(names.values()).count(names[p]) > 1)
        raise DataError(f"{first}: its results and another file's would share the name {names[first]}; "
                        f"predict the folders one at a time, each into its own --out")
    return names


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


def coco_file_of(folder: str | os.PathLike, config: DataConfig) -> Path | None:
    """The COCO file that annotates ``folder``: its one COCO JSON (with ``images/``, beside that folder).

    Returns None for a folder of masks. With ``encoding="coco"``, a folder without exactly one COCO file is an error.
    """
    folder = Path(folder)
    found = sorted(p for p in folder.glob("*.json") if is_coco_file(p))
    if config.encoding == "coco" and len(found) != 1:
        raise DataError(f"{folder}: {'no' if not found else len(found)} COCO annotation files; data.encoding='coco' "
                        f"needs exactly one *.json with images, annotations and categories beside the images")
    if len(found) == 1 and config.encoding in ("coco", "parts"):
        return found[0]
    return None


def _match_coco(folder: Path, annotations: Path, config: DataConfig) -> Matching:
    """Pair every image that the COCO file lists with it; an image on disk that it does not list is unpaired."""
    coco = read_coco(annotations)
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    listed = {entry.file_name: entry for entry in coco.images.values()}
    matching = Matching([], [])
    on_disk = {p.name: p for p in list_images(image_dir, config.image_glob)}
    for name, entry in sorted(listed.items()):
        path = image_dir / name
        if not path.is_file():
            matching.unpaired.append((path, f"listed in {annotations.name} but not found in {image_dir}"))
        else:
            matching.pairs.append(Pair(image=path, annotations=annotations, image_id=entry.id))
    for name, path in sorted(on_disk.items()):
        if name not in listed and Path(name).name not in {Path(n).name for n in listed}:
            matching.unpaired.append((path, f"not in {annotations.name}, which annotates this folder"))
    return matching


def _geojson_index(folder: Path) -> dict[str, Path]:
    """The folder's GeoJSON files by the stem they annotate (``a.geojson`` and QuPath's ``a.tif.geojson``)."""
    index = {}
    for path in sorted(folder.glob("*.geojson")):
        index.setdefault(path.stem, path)
        index.setdefault(Path(path.stem).stem, path)  # a.tif.geojson annotates a.tif
    return index


def _match_geojson(image_dir: Path, mask_dir: Path, config: DataConfig, index: dict[str, Path]) -> Matching:
    """Pair every image with its GeoJSON file, by stem (or by whole name, as QuPath names an export)."""
    images = list_images(image_dir, config.image_glob)
    if not images:
        raise DataError(f"{image_dir}: no images matching {config.image_glob!r} beside the GeoJSON files; check "
                        f"the folder and data.image_glob")
    matching = Matching([], [])
    for image in images:
        found = index.get(image.name) or index.get(image.stem)
        if found is None:
            matching.unpaired.append((image, f"no GeoJSON file in {mask_dir} (expected {image.stem}.geojson)"))
        else:
            matching.pairs.append(Pair(image=image, annotations=found))
    return matching


def match_files(folder: str | os.PathLike, config: DataConfig) -> Matching:
    """Pair every image of ``folder`` with its mask file(s); see :func:`find_pairs`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    annotations = coco_file_of(folder, config)
    if annotations is not None:
        return _match_coco(folder, annotations, config)
    if (folder / "images").is_dir():
        image_dir, mask_dir = folder / "images", folder / "masks"
        if not mask_dir.is_dir():
            raise DataError(f"{folder}: has images/ but no masks/ folder; put the masks in {mask_dir}")
    else:
        image_dir = mask_dir = folder
    geojson = _geojson_index(mask_dir) if config.encoding in ("parts", "geojson") else {}
    if config.encoding == "geojson" and not geojson:
        raise DataError(f"{mask_dir}: no GeoJSON files; data.encoding='geojson' needs <image stem>.geojson for "
                        f"each image (QuPath: File > Export objects as GeoJSON)")
    if config.encoding == "geojson":
        return _match_geojson(image_dir, mask_dir, config, geojson)
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
        labels = ngff_image(image) / "labels" if is_zarr(image) else None
        if labels is not None and all(is_zarr(labels / kind) for kind in wanted[config.encoding]):
            # NGFF labels in the image's own store (labels/parts, labels/cells, labels/nuclei)
            matching.pairs.append(Pair(image=image, **{kind: labels / kind for kind in wanted[config.encoding]}))
            continue
        stems = dict.fromkeys((image_stem(image), image.stem))  # a.ome.tif: a_masks.tif, else a.ome_masks.tif
        files = {
            kind: next((found for stem in stems
                        if (found := _find_mask(stem, suffix[kind], index, image if same_folder else None,
                                                required_suffix=kind != "parts" or not plain_ok)) is not None), None)
            for kind in wanted[config.encoding]
        }
        absent = [k for k, v in files.items() if v is None]
        if absent:
            expected = " and ".join(f"{image_stem(image)}{suffix[k]}.*" for k in absent)
            matching.unpaired.append((image, f"no {' or '.join(absent)} mask in {mask_dir} (expected {expected})"))
        else:
            matching.pairs.append(Pair(image=image, **files))
    if not matching.pairs and geojson:  # no masks, but GeoJSON files: QuPath's layout
        return _match_geojson(image_dir, mask_dir, config, geojson)
    return matching


def find_pairs(folder: str | os.PathLike, config: DataConfig) -> list[Pair]:
    """Pair every image of ``folder`` with its mask file(s).

    Layouts:

    (a) ``folder/images/`` and ``folder/masks/``, matched by stem;
    (b) one folder, masks named ``<stem><mask_suffix>`` (``cell_001_masks.tif``);
    (c) one folder, image and mask sharing a stem and told apart by
        ``image_glob`` and ``mask_glob`` (``001.bmp`` and ``001.png``);
    (d) one COCO instance JSON beside the images (or beside ``images/``), read
        without any flag when it is the folder's only COCO file;
    (e) a QuPath GeoJSON file per image, ``<stem>.geojson`` (or ``<name>.geojson``)
        beside it or in ``masks/``, read without any flag when no image has a mask.

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
