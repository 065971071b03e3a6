#!/usr/bin/env python
"""Images per second through CellDataset and a DataLoader, for the real WBC folder.

    python benchmarks/loader.py                         # ../shared/datasets/wbc_jtsc, none and strong, 2 workers
    python benchmarks/loader.py --epochs 3 --workers 2

Each setting reads every image of the folder ``--epochs`` times (the first pass
warms the file cache and is not counted) through a DataLoader with the training
batch size of 2 and the collate function of training. Goal: at least 20 times the
training step rate (see docs/benchmarks.md), so data never bounds training.
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import cellrcnn

WBC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wbc_jtsc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=WBC, help="WBC folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the folder; the first is warm-up")
    args = parser.parse_args()
    config = cellrcnn.DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255))
    pairs = cellrcnn.find_pairs(args.data, config)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"data: {len(pairs)} images from {args.data}, batch 2, {args.workers} workers")
    for augment in ("none", "strong"):
        dataset = cellrcnn.CellDataset(pairs, config, augment=augment)
        loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=args.workers,
                            collate_fn=cellrcnn.collate, persistent_workers=args.workers > 0)
        rates = []
        for epoch in range(args.epochs):
            start = time.perf_counter()
            count = sum(len(images) for images, _ in loader)
            if epoch > 0:
                rates.append(count / (time.perf_counter() - start))
        print(f"augment={augment:<6}  {statistics.median(rates):7.1f} images/s  "
              f"(epochs: {', '.join(f'{r:.1f}' for r in rates)})")


if __name__ == "__main__":
    main()
