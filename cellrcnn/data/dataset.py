"""The training dataset: samples read, cropped, augmented and made into targets."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..config.data import DataConfig
from ..io.coco import coco_masks, read_coco
from ..io.geojson import geojson_masks
from ..io.files import DataError, read_raw_axes
from ..io.folders import Pair, class_of, match_files, read_classes_csv
from ..io.intensity import image_from_array
from ..io.masks import map_part_values, read_labels
from .augment import apply_augmentation, build_augmentation
from .targets import (annotated_part_maps, instance_targets, overlapping_targets, parts_from_instances,
                      select_largest, whole_cell_targets)

__all__ = ["derived_seed", "load_sample", "build_target", "random_crop", "CellDataset", "cell_sizes", "collate",
           "check_folder"]

logger = logging.getLogger(__name__)


def derived_seed(*keys: int) -> int:
    """A 32-bit seed that depends on every key (numpy's ``SeedSequence``): no two key tuples share a stream,
    as ``seed + epoch`` would."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def _annotated_sample(pair: Pair, config: DataConfig, shape: tuple[int, int], label: int) -> dict[str, Any]:
    """Per-cell part maps of an image annotated in COCO or GeoJSON: cells overlap, each part tied to its cell."""
    if len(config.coco_parts) + 2 != len(config.part_values):
        raise DataError(f"{pair.annotations}: {len(config.part_values)} parts need {len(config.part_values) - 2} "
                        f"part categories besides the cell, but data.coco_parts names {len(config.coco_parts)} "
                        f"({', '.join(config.coco_parts)})")
    classes = config.class_names if len(config.class_names) > 1 else ()
    if pair.annotations.suffix.lower() == ".geojson":
        found = geojson_masks(pair.annotations, shape, config.coco_cell, config.coco_parts)
    else:
        coco = read_coco(pair.annotations)
        entry = coco.images[pair.image_id]
        if (entry.height, entry.width) != shape:
            raise DataError(f"{pair.annotations}: says {pair.image.name} is {entry.width}x{entry.height} pixels, "
                            f"but it is {shape[1]}x{shape[0]}; annotations must match their image")
        found = coco_masks(coco, pair.image_id, config.coco_cell, config.coco_parts, classes)
    instances, untied = annotated_part_maps(found, config.coco_parts)
    # an object with no pixel in the image (wholly outside it, or of no area) is left out without a word in training
    empty = sum(int(not m.any()) for masks in (found["cells"], *found["parts"].values()) for m in masks)
    labels = np.full(len(instances), label, dtype=np.int64)
    if classes:  # each cell its own class, where the annotation names one
        for k, name in enumerate(found["classes"]):
            if name is not None and name not in classes:
                raise DataError(f"{pair.annotations}: a cell of {pair.image.name} is classified {name!r}, which is "
                                f"not among data.class_names ({', '.join(classes)}); add it there")
            if name is not None:
                labels[k] = classes.index(name) + 1
    return {"instances": instances, "parts": instances.max(axis=0, initial=0), "untied": untied,
            "empty": empty, "cell_labels": labels}


def load_sample(pair: Pair, config: DataConfig, classes: dict[str, int] | None = None) -> dict[str, Any]:
    """Read one image and its masks as training would, before augmentation.

    Returns
    -------
    dict
        ``image`` float32 ``[H, W, 3]`` in [0, 1], ``parts`` uint8 ``[H, W]`` part
        indices, ``cells`` int64 ``[H, W]`` instance ids or None, ``label`` (the
        image's cell class), ``dtype`` (of the image file, as a string). A COCO-annotated
        or GeoJSON-annotated image (whose cells may overlap) has ``instances``, uint8
        ``[N, H, W]`` per-cell part maps, with ``parts`` their union (the highest part where
        cells overlap), ``cell_labels`` int64 ``[N]`` each cell's class, and ``untied``, the
        number of part annotations no cell holds.
    """
    raw, axes = read_raw_axes(pair.image, config.max_pixels)  # channels chosen and stacks projected as config says
    image = image_from_array(raw, config, name=str(pair.image), axes=axes)
    label = class_of(classes, pair.name, config.classes_csv) if classes is not None else 1
    if pair.annotations is not None:
        return {"image": image, "cells": None, "label": label, "dtype": str(raw.dtype),
                **_annotated_sample(pair, config, image.shape[:2], label)}
    maps = {kind: read_labels(path, config.max_pixels) for kind, path in
            (("parts", pair.parts), ("cells", pair.cells), ("nuclei", pair.nuclei)) if path is not None}
    for kind, labels in maps.items():
        if labels.shape != image.shape[:2]:
            path = getattr(pair, kind)
            raise DataError(f"{path}: mask is {labels.shape[1]}x{labels.shape[0]} pixels but its image "
                            f"{pair.image.name} is {image.shape[1]}x{image.shape[0]}; masks must match their "
                            f"image pixel for pixel")
    if "nuclei" in maps:
        parts = parts_from_instances(maps["cells"], maps["nuclei"])
    else:
        parts = map_part_values(maps["parts"], config.part_values, config.snap_values, name=str(pair.parts))
    return {"image": image, "parts": parts, "cells": maps.get("cells"), "label": label, "dtype": str(raw.dtype)}


def build_target(parts: np.ndarray, cells: np.ndarray | None, label: int | np.ndarray, config: DataConfig,
                 instances: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Whole-cell targets of one image: from per-cell part maps (overlapping cells) when there are some, else
    from the instance map when there is one, else from the part map. ``label`` is every cell's class, or with
    ``instances`` one class per map."""
    if instances is not None:
        target = overlapping_targets(instances, config.min_area, label)
    elif cells is not None:
        target = instance_targets(cells, parts, config.min_area, label)
    else:
        target = whole_cell_targets(parts, config.min_area, label)
    return select_largest(target) if config.targets == "largest" else target


def random_crop(sample: dict[str, Any], size: int, rng: np.random.Generator) -> dict[str, Any]:
    """A random ``size`` x ``size`` window of a sample from :func:`load_sample` (image and label maps alike).

    A side no longer than ``size`` is kept whole. Targets are built from the
    cropped maps afterwards, so a cell cut by the window's edge keeps its
    visible part, and is dropped when that has fewer than ``min_area`` pixels,
    as a cell cut by an image's own border is.
    """
    H, W = sample["parts"].shape
    y0 = int(rng.integers(0, max(H - size, 0) + 1))
    x0 = int(rng.integers(0, max(W - size, 0) + 1))
    window = (slice(y0, y0 + size), slice(x0, x0 + size))
    cropped = {k: (v[(slice(None), *window)] if k == "instances" else v[window]
                   if isinstance(v, np.ndarray) and v.ndim >= 2 else v)  # per-cell labels stay as they are
               for k, v in sample.items()}
    cropped["image"] = np.ascontiguousarray(cropped["image"])
    return cropped


class CellDataset(Dataset):
    """Images and whole-cell targets of a list of pairs, for torchvision detection models.

    Item ``i`` is ``(image, target)``: image float32 ``[3, H, W]`` in [0, 1], and
    the target dict of :mod:`cellrcnn.data.targets` as tensors, plus ``image_id``
    (int64, ``i``; the file is ``dataset.pairs[i]``).

    Parameters
    ----------
    pairs : list of Pair
        From :func:`cellrcnn.io.find_pairs`.
    config : DataConfig
        The data section of the run's config.
    augment : str or albumentations Compose
        ``"none"`` (the default; use it for validation), ``"light"``, ``"strong"``
        or your own pipeline.
    seed : int, optional
        With a seed, image ``i`` in epoch ``e`` (:meth:`set_epoch`) is always
        cropped (``config.crop``) and augmented the same way: the pipeline is seeded from ``(seed, e, i)``, so
        neither the number of loader workers nor the batch order changes a run,
        and a resumed run augments as an uninterrupted one. Without one, each
        item draws its augmentation seed from torch's generator, which a
        DataLoader seeds apart per worker and epoch.
    """

    def __init__(self, pairs: list[Pair], config: DataConfig, augment: Any = "none", seed: int | None = None) -> None:
        if not pairs:
            raise DataError("no image/mask pairs to make a dataset of")
        self.pairs = list(pairs)
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.augmentation = build_augmentation(augment)
        self.classes = (read_classes_csv(config.classes_csv, len(config.class_names))
                        if config.classes_csv else None)
        if self.classes is not None:
            for pair in self.pairs:  # fail now, not in a worker in the middle of an epoch
                class_of(self.classes, pair.name, config.classes_csv)

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation the next items get (call before making the epoch's loader)."""
        self.epoch = epoch

    def _item_seed(self, index: int, *purpose: int) -> int:
        if self.seed is None:
            return int(torch.randint(2**31 - 1, ()).item())
        return derived_seed(self.seed, self.epoch, index, *purpose)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = load_sample(self.pairs[index], self.config, self.classes)
        if self.config.crop:
            sample = random_crop(sample, self.config.crop, np.random.default_rng(self._item_seed(index, 1)))
        instances = sample.get("instances")
        extra = [sample["cells"]] if sample["cells"] is not None else list(instances if instances is not None else [])
        if self.augmentation is not None:
            # albumentations 2 keeps its own generator, blind to torch and numpy seeding: seed it per item.
            self.augmentation.set_random_seed(self._item_seed(index))
        image, maps = apply_augmentation(self.augmentation, sample["image"], [sample["parts"], *extra])
        if instances is not None:  # overlapping cells: each keeps its own whole map through the augmentation
            stacked = np.stack(maps[1:]) if len(maps) > 1 else np.zeros((0, *maps[0].shape), np.uint8)
            target = build_target(maps[0], None, sample["cell_labels"], self.config, stacked)
        else:
            target = build_target(maps[0], maps[1] if len(maps) > 1 else None, sample["label"], self.config)
        tensors = {k: torch.from_numpy(v) for k, v in target.items()}
        tensors["image_id"] = torch.tensor(index, dtype=torch.int64)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), tensors


def cell_sizes(pairs: list[Pair], config: DataConfig, count: int = 20) -> pd.DataFrame:
    """Image and cell sizes of the first ``count`` pairs (evenly spread over the list), as read for training.

    Returns
    -------
    pandas.DataFrame
        One row per cell: ``image``, image ``height`` and ``width``,
        ``cell_side``, the square root of the cell's box area, in pixels, and
        ``part_pixels``, a tuple of the pixels of each part label ``0..`` inside
        the cell's box (background first), as the mask head sees the cell.
    """
    chosen = pairs if len(pairs) <= count else [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, count)]
    rows = []
    for pair in chosen:
        sample = load_sample(pair, config)
        H, W = sample["parts"].shape
        target = build_target(sample["parts"], sample["cells"], 1, config, sample.get("instances"))
        boxes, masks = target["boxes"], target["masks"]
        sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        for s, box, mask in zip(sides, boxes, masks):
            x0, y0, x1, y1 = (int(v) for v in np.round(np.asarray(box)))
            pixels = tuple(int(n) for n in np.bincount(np.asarray(mask[y0:y1, x0:x1]).ravel()))
            rows.append({"image": pair.image.name, "height": H, "width": W, "cell_side": float(s),
                         "part_pixels": pixels})
    return pd.DataFrame(rows, columns=["image", "height", "width", "cell_side", "part_pixels"])


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Batch for torchvision detection models: a list of images and a list of targets."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def check_folder(folder: str | os.PathLike, config: DataConfig, part_names: tuple[str, ...] | None = None) -> dict:
    """Read every pair of ``folder`` as training would and report what is found.

    Parameters
    ----------
    folder : path
        The data folder.
    config : DataConfig
        How to read it.
    part_names : tuple of str, optional
        Names for the part columns (default ``part0``, ``part1``, ...).

    Returns
    -------
    dict
        ``table``: a DataFrame with one row per readable image (image, mask,
        width, height, dtype, cells, and the pixel fraction of each part);
        ``problems``: a list of one-line messages, each naming a file.
    """
    names = part_names or tuple(f"part{k}" for k in range(len(config.part_values)))
    matching = match_files(folder, config)
    problems = [f"{image}: {problem}" for image, problem in matching.unpaired]
    classes = None
    if config.classes_csv:
        try:
            classes = read_classes_csv(config.classes_csv, len(config.class_names))
        except DataError as err:
            problems.append(str(err))
    rows = []
    for pair in matching.pairs:
        try:
            sample = load_sample(pair, config, classes)
            target = build_target(sample["parts"], sample["cells"], sample.get("cell_labels", sample["label"]), config,
                                  sample.get("instances"))
        except DataError as err:
            problems.append(str(err))
            continue
        overlap = {}
        if "instances" in sample:
            if sample["untied"]:
                problems.append(f"{pair.image}: {sample['untied']} part annotation(s) of {pair.annotations.name} lie "
                                f"in no cell (less than half inside any); they are left out")
            if sample.get("empty"):
                H, W = sample["parts"].shape
                problems.append(f"{pair.image}: {sample['empty']} object(s) of {pair.annotations.name} have no pixel "
                                f"in the {W}x{H} image (wholly outside it); they are left out: check that the "
                                f"annotations belong to this image")
            covered = (sample["instances"] > 0).sum(axis=0)
            overlap = {"overlap_fraction": float((covered > 1).sum() / max((covered > 0).sum(), 1))}
        H, W = sample["parts"].shape
        fractions = np.bincount(sample["parts"].ravel(), minlength=len(names)) / (H * W)
        if len(target["boxes"]) == 0:
            logger.info("%s has no cell of at least %d pixels (a negative sample)", pair.image, config.min_area)
        rows.append({"image": pair.image.name, "mask": ";".join(p.name for p in pair.masks), "width": W,
                     "height": H, "dtype": sample["dtype"], "class": sample["label"], "cells": len(target["boxes"]),
                     **{f"{n}_fraction": f for n, f in zip(names, fractions)}, **overlap})
    return {"table": pd.DataFrame(rows), "problems": problems}
