"""COCO instance JSON: cells that may overlap, with their parts as their own annotations.

The masks are decoded by pycocotools (polygons and RLE). Everything wrong with a
file raises :class:`~cellrcnn.io.files.DataError`, naming the file, the annotation
and what to do.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
from pycocotools import mask as coco_mask

from ..config.fields import MAX_PIXELS
from ..utils.files import MAX_ANNOTATION_BYTES, read_text_within
from .files import DataError

__all__ = ["CELL_LINK", "PREDICTION_FILE", "CocoImage", "CocoFile", "is_coco_file", "read_coco", "parse_segmentation", "decode_annotation",
           "coco_masks"]

#: The keys a COCO instance file has at its top level.
COCO_KEYS = ("images", "annotations", "categories")
#: The COCO file of a folder of predictions (``cellrcnn-predict --coco``), which ``cellrcnn-evaluate`` reads back.
PREDICTION_FILE = "cells.json"
#: The field of a part annotation holding the ``id`` of its cell's annotation (cellrcnn writes it; when every part
#: of a category has it, it ties the parts instead of the rule).
CELL_LINK = "cell_id"


@dataclass(frozen=True)
class CocoImage:
    """One entry of a COCO file's ``images``."""

    id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class CocoFile:
    """A checked COCO instance file: its images by id, category ids by name, annotations by image id."""

    path: Path
    images: dict[int, CocoImage]
    categories: dict[str, int]
    annotations: dict[int, list[dict]]


def is_coco_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSON file with COCO's top-level keys.

    Raises
    ------
    DataError
        A ``.json`` file that cannot be read or parsed: in a data folder it is most likely broken annotations.
    """
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    data = _load_json(path)
    return isinstance(data, dict) and all(key in data for key in COCO_KEYS)


def _fail(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}")


def _load_json(path: Path):
    try:
        return json.loads(read_text_within(path, MAX_ANNOTATION_BYTES, "split the data set into several folders, "
                                                                       "each with its own COCO file"))
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(path, f"cannot be read ({err}); check the file") from None
    except DataError:  # too large: its own message
        raise
    except ValueError as err:
        raise _fail(path, f"is not valid JSON ({err}); export the annotations again, or move the file out of the "
                          f"data folder") from None


def _inside(path: Path, entry: CocoImage) -> None:
    """Refuse a ``file_name`` that leaves the annotations' folder (``../x.tif``, ``/data/x.tif``, ``C:\\x.tif``):
    a COCO file names images beside it, and reads nothing else."""
    name = entry.file_name.replace("\\", "/")
    if not name or name.startswith("/") or PureWindowsPath(name).drive or ".." in name.split("/"):
        raise _fail(path, f"image {entry.id}: file_name {entry.file_name!r} points outside the folder of the "
                          f"annotations; give names relative to it (such as 'cell_01.tif' or 'images/cell_01.tif')")


@functools.lru_cache(maxsize=8)
def _read_cached(path: Path, mtime_ns: int) -> CocoFile:
    data = _load_json(path)
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in COCO_KEYS):
        raise _fail(path, f"is not a COCO instance file: it needs the lists {', '.join(COCO_KEYS)}")
    try:
        images = {int(i["id"]): CocoImage(int(i["id"]), str(i["file_name"]), int(i["height"]), int(i["width"]))
                  for i in data["images"]}
        categories = {str(c["name"]): int(c["id"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        what = f"lacks {err}" if isinstance(err, KeyError) else f"has a value of the wrong kind ({err})"
        raise _fail(path, f"an image or category entry {what} (images need id, file_name, height and "
                          f"width; categories id and name)") from None
    for entry in images.values():
        _inside(path, entry)
        if not (entry.height >= 1 and entry.width >= 1 and entry.height * entry.width <= MAX_PIXELS):
            raise _fail(path, f"image {entry.id}: height {entry.height} and width {entry.width} are not the size of "
                              f"an image (at most {MAX_PIXELS:,} pixels); fix the entry or export the annotations "
                              f"again")
    annotations: dict[int, list[dict]] = {i: [] for i in images}
    known = set(categories.values())
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not {"image_id", "category_id", "segmentation"} <= set(ann):
            raise _fail(path, f"annotation {ann.get('id', '?') if isinstance(ann, dict) else ann!r} needs "
                              f"image_id, category_id and segmentation")
        ids = {key: ann.get(key) for key in ("id", "image_id", "category_id", CELL_LINK) if key in ann}
        if any(not isinstance(v, (int, str)) or isinstance(v, bool) for v in ids.values()):
            bad = next(k for k, v in ids.items() if not isinstance(v, (int, str)) or isinstance(v, bool))
            raise _fail(path, f"annotation {ann.get('id', '?')!r}: its {bad} is {ids[bad]!r}, not an id (a number); "
                              f"fix it or export the annotations again")
        if ann["image_id"] not in annotations:
            raise _fail(path, f"annotation {ann.get('id', '?')} points to image_id {ann['image_id']}, which no "
                              f"entry of images has; fix or remove it")
        if ann["category_id"] not in known:
            raise _fail(path, f"annotation {ann.get('id', '?')} has category_id {ann['category_id']}, which no "
                              f"entry of categories has")
        annotations[ann["image_id"]].append(ann)
    return CocoFile(path, images, categories, annotations)


def read_coco(path: str | os.PathLike) -> CocoFile:
    """Read and check a COCO instance file (read once while it is unchanged)."""
    path = Path(path).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        raise _fail(path, "annotation file not found") from None
    return _read_cached(path, mtime)


def parse_segmentation(seg, name: str = "annotation"):
    """An annotation's segmentation as COCO defines it: an RLE dict written as a Python literal string (as
    some converters do) becomes the dict; polygons and dicts pass as they are."""
    if isinstance(seg, str):
        try:
            return ast.literal_eval(seg)
        except (ValueError, SyntaxError):
            raise DataError(f"{name}: segmentation is a string but not an RLE dict") from None
    return seg


def decode_annotation(ann: dict, height: int, width: int, path: str | os.PathLike = "annotations") -> np.ndarray:
    """The bool ``[height, width]`` mask of one annotation: polygons, RLE (compressed or not) or a string RLE.

    Raises
    ------
    DataError
        A polygon of fewer than 3 points, RLE of another size than the image, or a segmentation of no known form.
    """
    name = f"{path}: annotation {ann.get('id', '?')}"
    seg = parse_segmentation(ann["segmentation"], name)
    if isinstance(seg, list):
        if not seg or any(not isinstance(p, list) or len(p) < 6 or len(p) % 2 for p in seg):
            raise DataError(f"{name}: a polygon needs at least 3 points (x, y pairs); fix or remove it")
        reach = 2 * (height + width)  # pycocotools allocates for every pixel a polygon's edges cross
        if any(not _number(v) or not -reach <= v <= reach for p in seg for v in p):
            raise DataError(f"{name}: a polygon point is not a number inside or near the {width}x{height} image; "
                            f"fix or remove it")
        rle = coco_mask.merge(coco_mask.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size = seg["size"]
        if not isinstance(size, list) or size != [height, width]:
            shown = f"{size[1]}x{size[0]}" if isinstance(size, list) and len(size) == 2 else repr(size)
            raise DataError(f"{name}: RLE of size {shown} for an image of {width}x{height} pixels; the mask must "
                            f"match its image")
        counts = seg["counts"]
        if isinstance(counts, list) and all(_number(c) and c == int(c) and c >= 0 for c in counts):
            total = sum(int(c) for c in counts)  # equal to the pixels: each run then fits pycocotools' uint32
            rle = {"size": [height, width], "counts": [int(c) for c in counts]}
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
            total = _rle_total(rle["counts"])
        else:
            total = None
        # pycocotools decodes without checking that the runs fill the image: a short or long RLE would read or
        # write memory outside the mask
        if total != height * width:
            raise DataError(f"{name}: its RLE counts do not cover the {width}x{height} image exactly; export the "
                            f"annotations again")
        if isinstance(rle["counts"], list):
            rle = coco_mask.frPyObjects(rle, height, width)
    else:
        raise DataError(f"{name}: segmentation must be polygons or RLE")
    return coco_mask.decode(rle).astype(bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rle_total(counts: bytes) -> int | None:
    """The pixels a compressed COCO RLE string covers (the sum of its runs), or None when it is not one.

    The string is the COCO API's own: runs in 5-bit groups of characters from ``0`` (48) on, a continuation bit
    (32) and a sign bit (16) in the last group, each run from the third on stored as its difference to the run
    two before (``rleFrString`` in the API's maskApi.c).
    """
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts) or not 48 <= counts[position] < 112:
                return None
            code = counts[position] - 48
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position, shift = position + 1, shift + 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return sum(runs)


def coco_masks(coco: CocoFile, image_id: int, cell: str, parts: tuple[str, ...], classes: tuple[str, ...] = ()) -> dict:
    """The decoded cell and part masks of one image of a COCO file.

    Parameters
    ----------
    coco : CocoFile
        From :func:`read_coco`.
    image_id : int
        The image's id in the file.
    cell : str
        The category of whole cells.
    parts : tuple of str
        The categories of parts annotated on their own (``("nucleus",)``).
    classes : tuple of str
        Cell class names: a category of one of these names holds whole cells of that class.

    Returns
    -------
    dict
        ``cells`` bool ``[N, H, W]``; ``classes`` each cell's class name: its category when that is a
        class, else its ``attributes.class``, else None; ``parts`` a dict of category to bool ``[M, H, W]``;
        ``ids`` the annotation ids of the cells; ``links`` a dict of category to int ``[M]``, each
        part's cell index, for the categories whose every part names its cell (:data:`CELL_LINK`).
    """
    cell_categories = [name for name in (cell, *classes) if name in coco.categories and name not in parts]
    missing = [name for name in parts if name not in coco.categories] + ([cell] if not cell_categories else [])
    if missing:
        raise DataError(f"{coco.path}: no category {', '.join(map(repr, missing))} (it has "
                        f"{', '.join(map(repr, coco.categories))}); set data.coco_cell and data.coco_parts")
    image = coco.images[image_id]
    shape = (image.height, image.width)

    def stack(names: list[str]) -> tuple[np.ndarray, list[dict]]:
        ids = {coco.categories[name] for name in names}
        anns = [a for a in coco.annotations[image_id] if a["category_id"] in ids]
        masks = [decode_annotation(a, *shape, coco.path) for a in anns]
        return (np.stack(masks) if masks else np.zeros((0, *shape), bool)), anns

    cells, cell_anns = stack(cell_categories)
    names = {v: k for k, v in coco.categories.items()}

    def class_of(ann: dict) -> str | None:
        category = names[ann["category_id"]]
        if category in classes:
            return category
        attributes = ann.get("attributes")
        return str(attributes["class"]) if isinstance(attributes, dict) and attributes.get("class") else None

    index = {a.get("id"): k for k, a in enumerate(cell_anns)}
    found, links = {}, {}
    for name in parts:
        found[name], anns = stack([name])
        if anns and all(a.get(CELL_LINK) is not None and a.get(CELL_LINK) in index for a in anns):
            links[name] = np.array([index[a[CELL_LINK]] for a in anns], dtype=np.int64)
    return {"cells": cells, "classes": [class_of(a) for a in cell_anns], "parts": found,
            "ids": [a.get("id") for a in cell_anns], "links": links}
