#!/usr/bin/env python
"""Tiled prediction of a WBC mosaic against the same model predicting each crop on its own.

The white-blood-cell crops of ``../shared/datasets/wbc_jtsc`` (those at least 120 px
square, cut to their central 120 x 120) are tiled edge to edge into mosaics with their
ground truth in place (:func:`cellrcnn.synthetic.wbc_mosaic`). A model is trained on
random 240-px crops of 3 x 3 mosaics (``--crop 240``, the way a lab trains on fields),
unless ``--checkpoint`` gives one. An 8 x 8 mosaic of the first 64 crops (seen in
training: this compares ways of predicting, not generalisation) is then predicted

- crop by crop, each crop on its own (the reference),
- whole, in one pass (no tiles),
- in tiles, for each ``--tiles SIZE/OVERLAP`` (overlaps smaller than a cell: some cells
  are seen whole by no tile and exist only as stitched pieces),

and scored with F1 at IoU 0.5 over the mosaic and the mean part Dice over the crops.
Also counted: cells split across two labels (see :func:`split_cells`).

    python benchmarks/tiled_wbc.py --out /tmp/tiled_wbc [--checkpoint RUN/best.pt] [--threshold 0.5]
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from skimage.io import imread
from skimage.measure import regionprops

import cellrcnn
from cellrcnn.evaluation.metrics import matching, part_dice
from cellrcnn.inference.tiles import grid_overlap
from cellrcnn.sample_data.mosaic import wbc_mosaic

WBC_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "wbc_jtsc"
WBC = cellrcnn.DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255))
PARTS = ("background", "cytoplasm", "nucleus")


def train(pairs, out: Path, fields: int, epochs: int) -> Path:
    """A model trained on random 240-px crops of ``fields`` 3 x 3 mosaics."""
    folder = out / "mosaics"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(fields):
        mosaic = wbc_mosaic(pairs[9 * i:9 * (i + 1)], WBC, columns=3, size=(120, 120))
        tifffile.imwrite(folder / f"m{i}.tif", mosaic["image"])
        tifffile.imwrite(folder / f"m{i}_cells.tif", mosaic["cells"].astype(np.uint16))
        tifffile.imwrite(folder / f"m{i}_masks.tif", mosaic["parts"])
    config = cellrcnn.Config(
        model=cellrcnn.ModelConfig(backbone="resnet18_fpn", weights="none", min_size=128, max_size=128,
                                   rpn_batch_size_per_image=32, box_batch_size_per_image=32),
        data=cellrcnn.DataConfig(encoding="cells+parts", crop=240, val_fraction=0.0),
        train=cellrcnn.TrainConfig(epochs=epochs, lr=0.01, lr_step=max(epochs // 2, 1), accumulate=4,
                                   workers=0, device="cpu", seed=0))
    run = cellrcnn.new_run_dir(out / "runs")
    cellrcnn.fit(config, folder, run, quiet=True)
    return run / "best.pt"


def split_cells(truth: np.ndarray, cells: np.ndarray) -> int:
    """True cells with two or more predicted labels that each lie mostly (half their pixels) inside the cell
    and cover a tenth of it (a sliver of a duplicate detection is not a split)."""
    sizes = np.bincount(cells.ravel())
    split = 0
    for region in regionprops(truth):
        inside = cells[tuple(region.coords.T)]
        found, counts = np.unique(inside[inside > 0], return_counts=True)
        split += int(((counts >= 0.5 * sizes[found]) & (counts >= 0.1 * region.area)).sum() > 1)
    return split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (mosaics, run, results.csv)")
    parser.add_argument("--checkpoint", type=Path, help="a trained model (default: train one, see above)")
    parser.add_argument("--fields", type=int, default=16, help="3 x 3 training mosaics")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threshold", type=float, default=0.5, help="detection score threshold")
    parser.add_argument("--tiles", nargs="+", default=["120/0", "200/40", "256/48", "300/60"], help="SIZE/OVERLAP")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pairs = [p for p in cellrcnn.find_pairs(WBC_DIR, WBC) if min(imread(p.image).shape[:2]) >= 120]
    checkpoint = args.checkpoint or train(pairs, args.out, args.fields, args.epochs)
    predictor = cellrcnn.Predictor.from_checkpoint(checkpoint, device="cpu")
    mosaic = wbc_mosaic(pairs[:64], WBC, columns=8, size=(120, 120))
    truth, image = mosaic["cells"], mosaic["image"]

    def score(name, cells, parts, tiles=1, overlap=0, unseen=0):
        f1 = matching(truth, cells, thresholds=(0.5,))["f1"][0]
        dice = np.mean([part_dice(parts[y0:y1, x0:x1], mosaic["parts"][y0:y1, x0:x1], PARTS)["part_dice"]
                        for y0, y1, x0, x1 in mosaic["windows"]])
        return {"prediction": name, "tiles": tiles, "overlap": overlap, "cells_seen_whole_by_no_tile": unseen,
                "cells": int(len(np.unique(cells)) - 1), "f1_at_0.5": f1, "mean_part_dice": dice,
                "split_cells": split_cells(truth, cells)}

    alone_cells, alone_parts, offset = np.zeros_like(truth), np.zeros_like(mosaic["parts"]), 0
    for y0, y1, x0, x1 in mosaic["windows"]:
        crop = predictor.predict(image[y0:y1, x0:x1], score_threshold=args.threshold)
        alone_cells[y0:y1, x0:x1] = np.where(crop.cells > 0, crop.cells + offset, 0)
        alone_parts[y0:y1, x0:x1] = crop.parts
        offset += int(crop.cells.max())
    rows = [score("each crop on its own", alone_cells, alone_parts)]
    whole = predictor.predict(image, tile=max(image.shape), overlap=0, score_threshold=args.threshold)
    rows.append(score("whole mosaic, one pass", whole.cells, whole.parts))
    regions = regionprops(truth)
    for spec in args.tiles:
        size, overlap = (int(v) for v in spec.split("/"))
        tiles = predictor.tiles(truth.shape, size, overlap)
        unseen = sum(not any(t.y0 <= r.bbox[0] and r.bbox[2] <= t.y1 and t.x0 <= r.bbox[1] and r.bbox[3] <= t.x1
                             for t in tiles) for r in regions)
        tiled = predictor.predict(image, tile=size, overlap=overlap, score_threshold=args.threshold)
        rows.append(score(f"tiles {size}/{overlap}", tiled.cells, tiled.parts, len(tiles), grid_overlap(tiles),
                          unseen))
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "results.csv", index=False)
    diameters = [max(r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1]) for r in regions]
    print(f"checkpoint {checkpoint}; scale {predictor.scale}; {len(regions)} true cells, median diameter "
          f"{np.median(diameters):.0f} px; score threshold {args.threshold}")
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
