#!/usr/bin/env python
"""Are detections without a nucleus false cells? (issue 31)

Every detection of an adapted WBC model on ``wbc_cellavision_test`` (every cell kept, score >= 0.5), each
marked true (IoU >= 0.5 with the annotated white cell) or false, counted by whether it holds a nucleus
(:func:`cellrcnn.inference.selection.nucleated`). Prints one JSON line per run and a summary.

    python benchmarks/nucleus_flag.py runs/peer31/cellrcnn-adapt-seed0 runs/peer31/cellrcnn-adapt-seed1 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from peer_wbc import CV_TEST, DATA
from skimage.io import imread

import cellrcnn
from cellrcnn.inference.selection import nucleated


def count(run: Path) -> dict:
    predictor = cellrcnn.Predictor.from_checkpoint(run / "best.pt", device="cpu")
    counts = {"true_nucleated": 0, "false_nucleated": 0, "true_without": 0, "false_without": 0}
    for pair in cellrcnn.find_pairs(CV_TEST, DATA):
        truth = imread(pair.parts) > 0  # the one annotated white cell (red cells are not annotated)
        prediction = predictor.predict(pair.image, largest=False)
        has = nucleated(prediction.cells, prediction.parts, len(prediction.table), predictor.parts)
        for label in range(1, len(prediction.table) + 1):
            own = prediction.cells == label
            iou = (own & truth).sum() / max(1, (own | truth).sum())
            key = ("true" if iou >= 0.5 else "false") + ("_nucleated" if has[label - 1] else "_without")
            counts[key] += 1
    return counts


def main() -> None:
    total: dict[str, int] = {}
    for run in map(Path, sys.argv[1:]):
        found = count(run)
        print(json.dumps({"run": run.name, **found}), flush=True)
        total = {k: total.get(k, 0) + v for k, v in found.items()}
    print(json.dumps({"run": "all", **total}), flush=True)


if __name__ == "__main__":
    main()
