#!/usr/bin/env python
"""How much the mask geometry alone costs: the ground truth sent through the model's mask path.

For each WBC image, the true part map of each cell is projected onto its true
whole-cell box (``project_parts_on_boxes``, M x M), pasted back
(``paste_parts_in_image``) and scored against the ground truth with the same Dice
as validation. A perfect model cannot do better than this.

Two paths:

- ``original``: at the image's own resolution, as the issue measured it;
- ``network``: the full training-to-prediction chain: the image and its masks
  resized to ``--size`` by the model's own transform, projected there, pasted back
  at the original resolution with the boxes scaled back, as prediction does. In
  exact mode training projects from the masks at their own resolution, so this path
  differs from ``original`` only by the boxes' trip through the resize.

    python benchmarks/mask_roundtrip.py                 # ../shared/datasets/wbc_jtsc, M = 28 and 56
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import cellrcnn
from cellrcnn.data.dataset import build_target, load_sample
from cellrcnn.modeling.heads import _to_mask_scale
from cellrcnn.modeling.transform import PartRCNNTransform

WBC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wbc_jtsc"
PARTS = ("background", "cytoplasm", "nucleus")


def round_trip(parts: np.ndarray, target: dict, M: int, aligned: bool, transform: PartRCNNTransform | None
               ) -> np.ndarray:
    """The part map after projection and paste; through the model's resize when a transform is given."""
    masks, boxes = torch.from_numpy(target["masks"]), torch.from_numpy(target["boxes"])
    H, W = parts.shape
    net_boxes = boxes
    if transform is not None:
        image, resized = transform.resize(torch.zeros(3, H, W), {"boxes": boxes.clone(), "masks": masks})
        masks, net_boxes = resized["masks"], resized["boxes"]
        if aligned:  # as PartRoIHeads: masks stay at their own resolution, the boxes are scaled to them
            net_boxes = net_boxes * _to_mask_scale(masks, image.shape[-2:])
    fractions = cellrcnn.project_parts_on_boxes(masks, net_boxes, torch.arange(len(boxes)), len(PARTS), M, aligned)
    # Prediction pastes in the original image with the boxes scaled back (torchvision's postprocess).
    pasted = cellrcnn.paste_parts_in_image(fractions, boxes, (H, W), 0.5, aligned)["part_masks"]
    return pasted.max(dim=0).values.numpy() if len(pasted) else np.zeros_like(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=WBC)
    parser.add_argument("--size", type=int, default=128, help="network input size of the 'network' path")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    data = cellrcnn.DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255))
    pairs = cellrcnn.find_pairs(args.data, data)
    transforms = {aligned: PartRCNNTransform(args.size, args.size, [0.0] * 3, [1.0] * 3, aligned=aligned).train()
                  for aligned in (False, True)}
    rows = []
    for pair in pairs:
        sample = load_sample(pair, data)
        target = build_target(sample["parts"], sample["cells"], 1, data)
        for path in ("original", "network"):
            for M in (28, 56):
                for aligned in (False, True):
                    transform = transforms[aligned] if path == "network" else None
                    pasted = round_trip(sample["parts"], target, M, aligned, transform)
                    scores = cellrcnn.part_dice(pasted, sample["parts"], PARTS)
                    rows.append({"path": path, "M": M, "geometry": "exact" if aligned else "torchvision", **scores})
    table = pd.DataFrame(rows).groupby(["path", "M", "geometry"], sort=False).mean(numeric_only=True)
    print(f"{len(pairs)} images; mean Dice of the round trip (network path at {args.size} px)")
    print(table[["cytoplasm_dice", "nucleus_dice", "cell_dice"]].round(4).to_string())


if __name__ == "__main__":
    main()
