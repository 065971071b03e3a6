#!/usr/bin/env python
"""Adapted models predicted again with the part head reading each detection's box grown about its centre
(``ModelConfig.part_box_scale``), nothing retrained (issue 38): does the box cut the cell?

    python benchmarks/box_scale.py --out runs/p38 --scales 1.0,1.15 cellrcnn-adapt-seed0 cellrcnn-adapt-seed1 ...

Each run folder under ``--out`` is scored on ``wbc_cellavision_test`` as ``peer_wbc.py`` scores it (mean per-image
Dice, the default cell rule), with the cytoplasm's 3-px edge band; one JSON line per run and scale, printed as made.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from peer_wbc import CV_TEST, DATA, PARTS

import cellrcnn
from cellrcnn.evaluation.metrics import edge_band_dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders under --out")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scales", default="1.0,1.15")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = cellrcnn.CellDataset(cellrcnn.find_pairs(CV_TEST, DATA), DATA)
    for run in args.runs:
        for scale in [float(s) for s in args.scales.split(",")]:
            predictor = cellrcnn.Predictor.from_checkpoint(args.out / run / "best.pt", device="cpu")
            predictor.model.roi_heads.box_scale = scale
            result = cellrcnn.report.score_folder(dataset, PARTS, predictor)
            means = result["summary"].set_index("metric")["value"]
            band = pd.DataFrame([edge_band_dice(i.pred_parts, i.true_parts, PARTS) for i in result["items"]]).mean()
            print(json.dumps({"run": run, "box_scale": scale,
                              **{k: round(float(means[f"mean {k}_dice"]), 3) for k in ("cytoplasm", "nucleus", "cell")},
                              "cytoplasm_band": round(float(band["cytoplasm_dice_band"]), 3)}), flush=True)


if __name__ == "__main__":
    main()
