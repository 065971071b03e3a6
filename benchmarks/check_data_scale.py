#!/usr/bin/env python
"""``cellrcnn-check-data`` on a large folder: 5,000 synthetic pairs (goal: under 10 s).

Writes ``--pairs`` image/mask pairs (64x64 PNGs from the synthetic generator, one
folder, masks named ``<stem>_masks.png``: the layout where every image's mask is
looked up among all files) into ``--work``, then times, in this process:

- pairing the files alone (``cellrcnn.io.match_files``), and
- the whole check (``cellrcnn.cli.check_data_main``: pairing, reading every image and
  mask, building the targets, the summary).

    python benchmarks/check_data_scale.py --work /tmp/check5000 --pairs 5000
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
from skimage.io import imsave

import cellrcnn
from cellrcnn.cli.check_data import check_data_main
from cellrcnn.io.folders import match_files


def write_folder(folder: Path, pairs: int, distinct: int = 50) -> None:
    """``pairs`` pairs, cycling through ``distinct`` synthetic samples (writing is not what is measured)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*_masks.png"))) == pairs:
        return
    samples = []
    for seed in range(distinct):
        sample = cellrcnn.synthetic_sample(seed, size=(64, 64), max_cells=2)
        imsave(folder / "a.png", sample["image"], check_contrast=False)
        imsave(folder / "b.png", sample["parts"], check_contrast=False)
        samples.append(((folder / "a.png").read_bytes(), (folder / "b.png").read_bytes()))
    for i in range(pairs):
        image, mask = samples[i % distinct]
        (folder / f"cell_{i:05d}.png").write_bytes(image)
        (folder / f"cell_{i:05d}_masks.png").write_bytes(mask)
    (folder / "a.png").unlink()
    (folder / "b.png").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the pairs")
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = args.work / f"pairs{args.pairs}"
    write_folder(folder, args.pairs)
    logging.disable(logging.INFO)  # the summary lines are not what is measured
    times = {"pairing (match_files)": [], "whole check (cellrcnn-check-data)": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        found = len(match_files(folder, cellrcnn.DataConfig()).pairs)
        times["pairing (match_files)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        code = check_data_main([str(folder)])
        times["whole check (cellrcnn-check-data)"].append(time.perf_counter() - start)
    assert found == args.pairs and code == 0, (found, code)
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.pairs} pairs of 64x64 PNGs in one folder; median of {args.repeats}\n")
    print("| step | seconds |")
    print("| --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {np.median(values):.2f} |")


if __name__ == "__main__":
    main()
