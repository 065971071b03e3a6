#!/usr/bin/env python
"""How well ``--cell-diameter auto`` finds the scale of unseen images (issue 21).

For a trained run, on three sets of images: ``wbc_jtsc`` 201-240 as they are (the scale
the model was trained at is right), the same images enlarged 2x (the right scale is half
of it), and all 20 ``wbc_cellavision_few`` images (cells about twice as large, another
stain). The true scale of an image is the one that brings its annotated cells to the
model's trained cell size. For each rule, the estimated scale against the true one:
median ratio, and the share of images within 15%.

Rules compared (the model runs at each scale of ``SCALE_LADDER`` once per image):

- ``two-pass``: a first pass at the training scale, then the scale its detections imply
  (their median diameter brought to the trained size), refined once (the issue's sketch);
- ``best-score``: the ladder scale whose best detection scores highest, refined once
  (what ``Predictor.estimate_scale`` does);
- ``consistent``: the ladder scale closest to the scale its own detections imply.

    python benchmarks/scale_estimate.py runs/peer/cellrcnn-source
"""

from __future__ import annotations

import argparse
import math
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from skimage.io import imread
from skimage.transform import rescale
from train_wbc import DATA, WBC

import cellrcnn
from cellrcnn.inference.scale import SCALE_LADDER, scale_from_diameters

CELLAVISION = WBC.parent / "wbc_cellavision_few"


def true_diameter(pair) -> float:
    sample = cellrcnn.data.load_sample(pair, DATA)
    boxes = cellrcnn.data.build_target(sample["parts"], sample["cells"], 1, DATA)["boxes"]
    return float(np.median(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))))


def images(name: str):
    """(name, uint8 image, true cell diameter in its pixels) of one of the three sets."""
    folder = CELLAVISION if name == "cellavision" else WBC
    pairs = cellrcnn.find_pairs(folder, DATA)
    if name != "cellavision":
        pairs = [p for p in pairs if int(p.name) > 200]
    factor = 2.0 if name == "jtsc x2" else 1.0
    for pair in pairs:
        image = imread(pair.image)
        if factor != 1.0:
            image = np.clip(rescale(image, factor, order=1, channel_axis=-1, preserve_range=True), 0, 255)
            image = image.round().astype(np.uint8)
        yield pair.name, image, true_diameter(pair) * factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="CSV of every image's estimates")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = cellrcnn.Predictor.from_checkpoint(args.run, device="cpu")
    model = predictor.config.model
    base, cell = model.input_scale, model.cell_size
    print(f"{platform.node()}: {os.cpu_count()} cores, {args.threads} thread(s), torch {torch.__version__}; "
          f"training scale {base:.3f}, trained cell size {cell:.1f} px")
    rows = []
    for name in ("jtsc", "jtsc x2", "cellavision"):
        for image_name, image, diameter in images(name):
            field = predictor._open(image, image_name)
            truth = cell / diameter
            ladder = []
            for factor in SCALE_LADDER:
                found = predictor._detect(field, base * factor, 0.5)
                implied = scale_from_diameters(found["diameters"], cell)
                ladder.append((base * factor, float(found["scores"].max()) if len(found["scores"]) else 0.0, implied))

            def refine(scale):
                found = predictor._detect(field, scale, 0.5)
                return scale_from_diameters(found["diameters"], cell) or scale

            first = ladder[SCALE_LADDER.index(1.0)][2] or base
            two_pass = refine(first)
            scored = [l for l in ladder if l[2] is not None]
            best = max(scored, key=lambda l: (l[1], -abs(math.log(l[0] / base))))[2] if scored else base
            best_score = refine(best)
            consistent = min(scored, key=lambda l: abs(math.log(l[2] / l[0])))[2] if scored else base
            rows.append({"set": name, "image": image_name, "truth": truth, "two-pass": two_pass,
                         "best-score": best_score, "consistent": refine(consistent)})
        print(f"{name}: done", flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    print("\n| images | rule | median estimate / truth | within 15% |")
    print("| --- | --- | --- | --- |")
    for name, group in table.groupby("set", sort=False):
        for rule in ("two-pass", "best-score", "consistent"):
            ratio = group[rule] / group["truth"]
            print(f"| {name} | {rule} | {ratio.median():.3f} | {((ratio - 1).abs() <= 0.15).mean():.0%} |")


if __name__ == "__main__":
    main()
