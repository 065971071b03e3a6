"""COCO instance JSON out: cells with their scores, and each separately categorised part linked to its cell.

The file is in COCO's dataset form (``images``, ``categories``, ``annotations``), with RLE masks (pycocotools):

- a whole cell is one annotation of the cell category (``cell`` by default), with its ``score``
  (predictions) and its class in ``attributes.class``;
- each part after cytoplasm (the nucleus) is one annotation of the part's category, whose
  ``cell_id`` field is the ``id`` of its cell's annotation. Cytoplasm is the rest of the cell and
  gets no annotation of its own.

cellrcnn reads such a file back as a training layout and as ground truth (the ``cell_id`` link is
honoured there, instead of the tying rule). A cell's mask is its whole mask, so cells may overlap:
a prediction keeps each detection's whole mask, except in a field predicted in tiles, where each
cell is what the label image holds of it (a pixel under two cells goes to the better-scoring one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from ..io.coco import CELL_LINK
from ..io.masks import CellMask, cell_masks_from_instances
from ..utils.files import atomic_write

__all__ = ["CocoImageCells", "coco_dataset", "merge_datasets", "write_coco"]



@dataclass
class CocoImageCells:
    """The cells of one image, to be written: ``shape`` ``(H, W)`` of the image, ``cells`` each cell's whole
    mask (its parts 1 cytoplasm, 2.. those with their own category), and optional per-cell ``scores`` and
    ``classes`` (names)."""

    file_name: str
    shape: tuple[int, int]
    cells: list[CellMask]
    scores: np.ndarray | None = None
    classes: list[str] | None = field(default=None)

    @classmethod
    def from_instances(cls, file_name: str, instances: np.ndarray, scores: np.ndarray | None = None,
                       classes: list[str] | None = None) -> "CocoImageCells":
        """From uint8 ``[N, H, W]`` per-cell part maps (0 outside the cell)."""
        return cls(file_name, instances.shape[1:], cell_masks_from_instances(instances), scores, classes)


def _annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int) -> dict:
    """One annotation of a bool ``[H, W]`` mask, its RLE (counts as text, as JSON needs) and its box."""
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = coco_mask.toBbox(encoded)
    rle = {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": rle,
            "area": int(mask.sum()), "bbox": [float(x), float(y), float(w), float(h)], "iscrowd": 0}


def coco_dataset(images: list[CocoImageCells], part_names: tuple[str, ...], cell: str = "cell") -> dict:
    """A COCO dataset dict of the cells of ``images``, ids counted from 1 in the order given.

    Parameters
    ----------
    images : list of CocoImageCells
        Each image's cells.
    part_names : tuple of str
        The model's parts: ``background``, ``cytoplasm``, then the parts that get their own category.
    cell : str
        The category of whole cells.
    """
    categories = [cell, *part_names[2:]]
    coco = {"info": {"description": "cellrcnn cells and their parts", "cell_link": CELL_LINK},
            "images": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)],
            "annotations": []}
    next_id = 1
    for image_id, item in enumerate(images, start=1):
        H, W = item.shape
        coco["images"].append({"id": image_id, "file_name": item.file_name, "height": int(H), "width": int(W)})
        for k, cell_mask in enumerate(item.cells):
            if not cell_mask.parts.any():
                continue
            own = cell_mask.full((H, W))  # one image-sized mask at a time: RLE needs the whole frame
            ann = _annotation(own > 0, next_id, image_id, 1)
            if item.scores is not None:
                ann["score"] = float(item.scores[k])
            if item.classes is not None:
                ann["attributes"] = {"class": str(item.classes[k])}
            coco["annotations"].append(ann)
            cell_id, next_id = next_id, next_id + 1
            for index in range(2, len(part_names)):
                part = own == index
                if part.any():
                    ann = _annotation(part, next_id, image_id, index)
                    ann[CELL_LINK] = cell_id
                    coco["annotations"].append(ann)
                    next_id += 1
    return coco


def write_coco(path: str | os.PathLike, dataset: dict, overwrite: bool = False) -> Path:
    """Write a COCO dataset dict as JSON, atomically; an existing file only with ``overwrite``."""
    text = json.dumps(dataset)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), overwrite=overwrite)


def merge_datasets(datasets: list[dict]) -> dict:
    """One COCO dataset of several from :func:`coco_dataset` with the same categories: images and annotations
    renumbered in the order given, each part still naming its cell."""
    if not datasets:
        raise ValueError("no datasets to merge")
    merged = {**datasets[0], "images": [], "annotations": []}
    for dataset in datasets:
        if dataset["categories"] != merged["categories"]:
            raise ValueError("datasets with other categories cannot be merged")
        image_ids = {}
        for image in dataset["images"]:
            image_ids[image["id"]] = len(merged["images"]) + 1
            merged["images"].append({**image, "id": image_ids[image["id"]]})
        offset = len(merged["annotations"])
        for ann in dataset["annotations"]:
            moved = {**ann, "id": ann["id"] + offset, "image_id": image_ids[ann["image_id"]]}
            if CELL_LINK in ann:
                moved[CELL_LINK] = ann[CELL_LINK] + offset
            merged["annotations"].append(moved)
    return merged
