#!/usr/bin/env python
"""Overlapping cervical cells (ISBI 2014): train on 20 images, score on the other 10 with the challenge's measures.

The 30 images of ``../shared/datasets/isbi2014_cervical`` (2 to 10 cells each, more in
the later ones) are split in id order: every third image is a test image (10), the
other 20 train (a fifth of them validate). The folders
are links and filtered copies of ``annotations.json`` under ``--out``; the data stay in
../shared. Training reads the COCO file as it is (overlapping cells, nuclei tied to
their cells); no layout flag is given.

Scores, on the test images (each row written to ``OUT/scores.csv`` as it is made):

- the ISBI 2014 measures of cells: Dice over the good cells (Dice > 0.7), FNo (the share
  of true cells without a good segmentation), the pixel rates TPp and FPp;
- nucleus detection F1 (a detection finds a nucleus when 60 % of each lies in the other);
- COCO mask AP of the cells, by pycocotools against the overlapping ground truth.

Predictions are label images (a pixel belongs to the best-scoring cell), so a cell
loses the part of it that lies under a better-scoring neighbour.

    python benchmarks/isbi_cervical.py train --out runs/isbi --epochs 30
    python benchmarks/isbi_cervical.py train --out runs/isbi_n4 --epochs 20 --part-weights nucleus=4
    python benchmarks/isbi_cervical.py score --out runs/isbi
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import cellrcnn
from cellrcnn.io.coco import parse_segmentation
from cellrcnn.evaluation.metrics import isbi_cells, isbi_summary, nucleus_detection, nucleus_summary

ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "isbi2014_cervical"
PARTS = ("background", "cytoplasm", "nucleus")


def split_folders(data: Path, out: Path) -> dict[str, Path]:
    """``out/train`` and ``out/test``: links to the images and each its part of annotations.json."""
    coco = json.loads((data / "annotations.json").read_text())
    ids = sorted(image["id"] for image in coco["images"])
    test = set(ids[2::3])
    folders = {}
    for name, keep in (("train", set(ids) - test), ("test", test)):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        part = {**coco, "images": [i for i in coco["images"] if i["id"] in keep],
                "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
        (folder / "annotations.json").write_text(json.dumps(part))
        for image in part["images"]:
            link = folder / image["file_name"]
            if not link.exists():
                link.symlink_to(data / image["file_name"])
        folders[name] = folder
    return folders


def config(epochs: int, size: int, part_weights: dict[str, float]) -> cellrcnn.Config:
    return cellrcnn.Config(
        model=cellrcnn.ModelConfig(backbone="resnet18_fpn", weights="none", min_size=size, max_size=size,
                                   part_weights=part_weights),
        data=cellrcnn.DataConfig(val_fraction=0.2, augment="light"),
        train=cellrcnn.TrainConfig(epochs=epochs, device="auto", workers=0,
                                   **{k: v for k, v in cellrcnn.config.SCHEDULES["scratch"].items()}))


def score(out: Path) -> pd.DataFrame:
    """The test set's scores for the run in ``out/run``; one row per image, and a summary row."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from cellrcnn.data.dataset import load_sample
    from cellrcnn.data.targets import instances_from_labels
    from cellrcnn.export.coco import CocoImageCells, coco_dataset, merge_datasets

    test = out / "test"
    predictor = cellrcnn.Predictor.from_checkpoint(out / "run" / "best.pt")
    data = predictor.config.data
    rows, cells_all, nuclei_all, predicted = [], [], [], []
    for pair in cellrcnn.find_pairs(test, data):
        truth = load_sample(pair, data)["instances"]
        prediction = predictor.predict(pair.image)
        pred = instances_from_labels(prediction.cells, prediction.parts)
        cells = isbi_cells(truth > 0, pred > 0)
        nuclei = nucleus_detection(_nuclei(truth), _nuclei(pred))
        cells_all.append(cells)
        nuclei_all.append(nuclei)
        table = prediction.table.set_index("cell_id")
        predicted.append(coco_dataset([CocoImageCells(pair.image.name, pred,
                                                      table["score"].reindex(range(1, len(pred) + 1)).to_numpy())],
                                      PARTS))
        rows.append({"image": pair.image.name, "true cells": len(truth), "predicted": len(pred),
                     **{f"cell {k}": v for k, v in isbi_summary(cells).items() if k != "cells"},
                     "nucleus F1": nuclei["f1"]})
    # COCO mask AP of the cells against the overlapping truth, by pycocotools
    truth_coco = json.loads((test / "annotations.json").read_text())
    merged = merge_datasets(predicted)
    names = {i["file_name"]: i["id"] for i in truth_coco["images"]}
    by_name = {i["id"]: names[i["file_name"]] for i in merged["images"]}
    detections = [{**a, "image_id": by_name[a["image_id"]], "category_id": 1} for a in merged["annotations"]
                  if a["category_id"] == 1]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {**truth_coco, "annotations": [{**a, "segmentation": parse_segmentation(a["segmentation"])}
                                                    for a in truth_coco["annotations"]]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(detections) if detections else COCO(), "segm")
        ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    pooled = isbi_summary(pd.concat(cells_all, ignore_index=True))
    summary = {"image": "all (cells pooled)", "true cells": int(pooled["cells"]),
               "predicted": sum(r["predicted"] for r in rows), "cell dice": pooled["dice"],
               "cell fno": pooled["fno"], "cell tpp": pooled["tpp"], "cell fpp": pooled["fpp"],
               "nucleus F1": nucleus_summary(nuclei_all)["f1"],
               "cell AP": float(ev.stats[0]), "cell AP50": float(ev.stats[1])}
    return pd.DataFrame(rows + [summary])


def _nuclei(instances: np.ndarray) -> np.ndarray:
    return np.stack([m == 2 for m in instances if (m == 2).any()]) if (instances == 2).any() else \
        np.zeros((0, *instances.shape[1:]), bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("train", "score"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=ISBI)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=256, help="network input side (images are 512 px)")
    parser.add_argument("--part-weights", default="{}", help="part loss weights, e.g. nucleus=4 (default: all 1)")
    args = parser.parse_args()
    print(f"machine: {platform.node() or 'vm'} {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, cuda {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
          flush=True)
    folders = split_folders(args.data, args.out)
    if args.step == "train":
        start = time.time()
        weights = cellrcnn.config.parse_field_value(dict[str, float], args.part_weights, "part_weights")
        history = cellrcnn.fit(config(args.epochs, args.size, weights), folders["train"], args.out / "run",
                               resume=(args.out / "run" / "last.pt").is_file())
        print(history.round(3).to_string(), f"\n{(time.time() - start) / 60:.1f} min", flush=True)
    else:
        table = score(args.out)
        table.to_csv(args.out / "scores.csv", index=False)
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
