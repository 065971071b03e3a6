#!/usr/bin/env python
"""Crop or field (issue 44): which images a single-cell model judges like its training crops, under each candidate
rule, measured on the detections a model really makes.

A single-cell model keeps only the largest complete cell of an image like its training crops, and every cell of a
field (:mod:`cellrcnn.inference.selection`). The judgement is made from the cells found in the image. Each stage
predicts with ``largest=False``, records what the judgement is made from (the image's shape, its scale for the
network, the boxes of every cell found, whether it was tiled), then applies every candidate rule to it:

- ``old``: issue 39's rule: the image's side counted in its largest *complete* cell (sqrt of the box area), at
  most 3 times the training crops' count; the scale rule when no cell is complete;
- ``all-cells``: the largest of every cell, a cell cut by the image's edge measured by its box's longer side
  (:func:`cellrcnn.inference.selection.cell_sides`); the scale rule with no cell;
- ``weighted-median``: as ``all-cells`` but the area-weighted median of the sides instead of the largest;
- ``count-all``: ``all-cells``, and a field when it holds 6 cells at least half the largest's side; the scale rule
  with fewer than 2 cells (this issue's first try);
- ``count-nucleated``: the same over the cells with a nucleus, a field from 5 (the second try);
- ``nucleated``: ``all-cells`` over the cells with a nucleus (all cells when none has one);
- ``library``: the rule the library applies now (``nucleated``, at most ``CROP_LIKE`` = 2.5 times the training
  crops' count of cells across).

Stages (each appends one row per image to ``OUT/crop_or_field.jsonl`` as it goes; a cut run keeps what it did):

- ``sample``: the test suite's single-cell fixture (the demo's model fine-tuned for one epoch on 64-px crops of the
  sample, one labelled cell each), trained with ``--seeds``, on the nine sample images (crops: 128 px, 2-5 cells
  each, the test suite's expectation) and on their 3 x 3 mosaic (a field). Run it under ``OMP_NUM_THREADS=1`` and
  without to see the thread count's effect. Needs the demo's model (``--demo``: ``make demo``'s
  ``runs/demo/run/best.pt``).
- ``cellavision``: the JTSC source model (``--source``, as ``peer_wbc.py``'s ``cellrcnn-source``) zero-shot on
  ``wbc_cellavision_few`` (20 single-cell crops: every one must be judged a crop), with no scale flag and with
  ``--cell-diameter auto`` (its size model, and the ladder of scales of a model without one), and on 3 x 3 mosaics
  of its images (fields). The choosing set: never
  ``wbc_cellavision_test``.

    python benchmarks/crop_or_field.py sample --demo runs/demo/run/best.pt --out runs/crop --seeds 0,1,2
    OMP_NUM_THREADS=1 python benchmarks/crop_or_field.py sample --demo runs/demo/run/best.pt --out runs/crop --seeds 0,1,2
    python benchmarks/crop_or_field.py cellavision --source runs/p38/cellrcnn-source --out runs/crop
    python benchmarks/crop_or_field.py table --out runs/crop
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from skimage.io import imread

import cellrcnn
from cellrcnn.inference import selection
from cellrcnn.inference.selection import cell_boxes, cell_sides, nucleated
from cellrcnn.sample_data.crops import write_single_cell_crops

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "data" / "sample"
SHARED = HERE.parents[1] / "shared" / "datasets"
CV_FEW = SHARED / "wbc_cellavision_few"
BMP = cellrcnn.DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255), snap_values=True)


class Recording(cellrcnn.Predictor):
    """A predictor that records what each image's crop-or-field judgement is made from."""

    seen: list[dict]

    def _finish(self, source, image, field, choice, scale, tiled):
        cells = field["cells"]
        self.seen.append({"shape": cells.shape, "scale": scale, "tiled": tiled,
                          "boxes": cell_boxes(cells, len(field["scores"])),
                          "nucleus": nucleated(cells, field["parts"], len(field["scores"]), self.parts)})
        return super()._finish(source, image, field, choice, scale, tiled)


def recording(checkpoint: Path, **options) -> Recording:
    loaded = cellrcnn.Predictor.from_checkpoint(checkpoint, device="cpu", **options)
    predictor = Recording(loaded.model, loaded.config, "cpu", **options)
    predictor.seen = []
    return predictor


def scale_rule(model, shape, scale, limit: float = 3.0) -> bool:
    if scale is None:
        scale = model.min_size / max(1, min(shape))
    return max(shape) * scale <= limit * model.max_size


def across(model, shape, side: float, limit: float = 3.0) -> bool:
    return max(shape) / side <= limit * model.max_size / model.cell_size


def counted(model, shape, scale, sides, fewest: int, limit: float = 3.0, comparable: float = 0.5) -> bool:
    """Issue 44's first tries: across by the largest, and a field from ``fewest`` cells of comparable size; the
    scale rule with fewer than 2 cells."""
    if len(sides) < 2:
        return scale_rule(model, shape, scale)
    return across(model, shape, sides.max(), limit) and int(np.sum(sides >= comparable * sides.max())) < fewest


def rules(model, seen: dict) -> dict[str, bool]:
    """Each candidate rule's judgement (True: a crop) of one image."""
    shape, scale, boxes, nucleus = seen["shape"], seen["scale"], seen["boxes"], seen["nucleus"]
    present = np.isfinite(boxes).all(axis=1)
    boxes, nucleus = boxes[present], None if nucleus is None else nucleus[present]
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cut = (boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, 2] >= shape[1]) | (boxes[:, 3] >= shape[0])
    complete = np.sqrt(width * height)[~cut]
    sides = cell_sides(boxes, shape)
    with_nucleus = sides[nucleus] if nucleus is not None and nucleus.any() else sides
    out = {"old": across(model, shape, complete.max()) if len(complete) else scale_rule(model, shape, scale),
           "all-cells": across(model, shape, sides.max()) if len(sides) else scale_rule(model, shape, scale)}
    if len(sides):
        order = np.argsort(sides)
        weights = np.cumsum((width * height)[order])
        median = sides[order][int(np.searchsorted(weights, weights[-1] / 2))]
        out["weighted-median"] = across(model, shape, median)
    else:
        out["weighted-median"] = scale_rule(model, shape, scale)
    out["count-all"] = counted(model, shape, scale, sides, 6)
    out["count-nucleated"] = counted(model, shape, scale, with_nucleus, 5)
    out["nucleated"] = across(model, shape, with_nucleus.max()) if len(sides) else scale_rule(model, shape, scale)
    out["library"] = selection.looks_like_training_crops(model, shape, scale, sides, nucleus)
    if seen["tiled"]:
        out = {k: False for k in out}
    return {k: bool(v) for k, v in out.items()}


def describe(seen: dict) -> dict:
    present = np.isfinite(seen["boxes"]).all(axis=1)
    sides = cell_sides(seen["boxes"][present], seen["shape"])
    nucleus = np.ones(len(sides), bool) if seen["nucleus"] is None else seen["nucleus"][present]
    comparable = sides >= 0.5 * sides.max() if len(sides) else np.zeros(0, bool)
    with_nucleus = sides[nucleus] if nucleus.any() else sides
    return {"cells": len(sides), "with_nucleus": int(nucleus.sum()), "comparable": int(comparable.sum()),
            "comparable_with_nucleus": int(np.sum(with_nucleus >= 0.5 * with_nucleus.max()))
            if len(with_nucleus) else 0,
            "largest_side": round(float(sides.max()), 1) if len(sides) else None,
            "largest_with_nucleus": round(float(with_nucleus.max()), 1) if len(with_nucleus) else None,
            "smallest_side": round(float(sides.min()), 1) if len(sides) else None,
            "scale": None if seen["scale"] is None else round(float(seen["scale"]), 3), "tiled": seen["tiled"]}


def append_row(out: Path, row: dict) -> None:
    with (out / "crop_or_field.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s)"


def mosaic(images: list[np.ndarray]) -> np.ndarray:
    """A 3 x 3 mosaic of nine images of one shape."""
    return np.concatenate([np.concatenate(images[r * 3:r * 3 + 3], axis=1) for r in range(3)], axis=0)


def single_cell_run(demo: Path, out: Path, seed: int) -> Path:
    """The test suite's single-cell fixture (tests/conftest.py) trained with ``seed``."""
    run = out / "run"
    if (run / "best.pt").is_file():
        return run / "best.pt"
    side = 64
    crops = write_single_cell_crops(SAMPLE, out / "crops", side)
    model = cellrcnn.model_config_from_run(demo)
    config = cellrcnn.Config(model=dataclasses.replace(model, min_size=side, max_size=side),
                             data=cellrcnn.DataConfig(val_fraction=0.25),
                             train=cellrcnn.TrainConfig(epochs=1, lr=0.001, workers=0, device="cpu", seed=seed,
                                                        size_model=False))
    cellrcnn.fit(config, crops, run, quiet=True)
    return run / "best.pt"


def run_sample(args) -> None:
    images = [imread(SAMPLE / "images" / f"sample_{i:02d}.png") for i in range(9)]
    threads = torch.get_num_threads()
    for seed in args.seeds:
        checkpoint = single_cell_run(args.demo, args.out / f"single-cell-seed{seed}-threads{threads}", seed)
        predictor = recording(checkpoint)
        model = predictor.config.model
        for i, image in enumerate(images):
            predictor.predict(image, largest=False)
            append_row(args.out, {"stage": "sample", "seed": seed, "threads": threads, "image": f"sample_{i:02d}",
                                  "truth": "crop", **describe(predictor.seen[-1]),
                                  **rules(model, predictor.seen[-1]), "machine": machine()})
        predictor.predict(mosaic(images), tile=512, largest=False)
        append_row(args.out, {"stage": "sample", "seed": seed, "threads": threads, "image": "3x3 mosaic",
                              "truth": "field", **describe(predictor.seen[-1]), **rules(model, predictor.seen[-1]),
                              "machine": machine()})


def run_cellavision(args) -> None:
    pairs = cellrcnn.find_pairs(CV_FEW, BMP)
    images = [cellrcnn.read_image(p.image, BMP) for p in pairs]
    for label_, options in (("no scale flag", {}), ("--cell-diameter auto", {"cell_diameter": "auto"}),
                            ("--cell-diameter auto, the ladder", {"cell_diameter": "auto"})):
        predictor = recording(args.source / "best.pt", **options)
        if "ladder" in label_:  # as a model trained before the size model (issue 39): the ladder of scales
            predictor.model.size_model = None
        model = predictor.config.model
        for pair, image in zip(pairs, images):
            predictor.predict(image, largest=False)
            append_row(args.out, {"stage": "cellavision", "row": label_, "image": pair.name, "truth": "crop",
                                  **describe(predictor.seen[-1]), **rules(model, predictor.seen[-1]),
                                  "machine": machine()})
        for start in (0, 9):  # two 900-px mosaics of nine crops each
            predictor.predict(mosaic(images[start:start + 9]), largest=False)
            append_row(args.out, {"stage": "cellavision", "row": label_, "image": f"3x3 mosaic {start + 1}-{start + 9}",
                                  "truth": "field", **describe(predictor.seen[-1]),
                                  **rules(model, predictor.seen[-1]), "machine": machine()})


def table(args) -> None:
    rows = pd.read_json(args.out / "crop_or_field.jsonl", lines=True)
    names = ["old", "all-cells", "weighted-median", "count-all", "count-nucleated", "nucleated", "library"]
    for stage, group in rows.groupby("stage"):
        print(f"\n{stage}")
        by = ["threads", "seed"] if stage == "sample" else ["row"]
        for key, sub in group.groupby(by):
            right = {n: f"{int(((sub[n]) == (sub['truth'] == 'crop')).sum())}/{len(sub)}" for n in names}
            wrong_crops = {n: ", ".join(sub.loc[(sub["truth"] == "crop") & ~sub[n], "image"].astype(str)) for n in names}
            print(key, right, {n: w for n, w in wrong_crops.items() if w})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("sample", "cellavision", "table"))
    parser.add_argument("--out", type=Path, default=Path("runs/crop"))
    parser.add_argument("--demo", type=Path, default=Path("runs/demo/run/best.pt"))
    parser.add_argument("--source", type=Path, default=Path("runs/p38/cellrcnn-source"))
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"sample": run_sample, "cellavision": run_cellavision, "table": table}[args.stage](args)


if __name__ == "__main__":
    main()
