#!/usr/bin/env python
"""Time and peak memory of tiled prediction on synthetic fluorescence fields of 1k to 8k pixels a side.

A small model (resnet18-FPN from scratch) is first trained on 256-px crops of
twelve small synthetic 2-channel 16-bit fields, the way a lab trains on its own
fields (``--crop 256 --channels 0,1``), long enough to find the cells: stitching
costs per cell, so a model that finds nothing would time only the network. Each field is then written as an
uncompressed TIFF and predicted by ``Predictor.predict`` in a fresh process, so
that its peak resident memory (``ru_maxrss``) is its own. Before the clock starts,
the process predicts one tile-sized window once: the first forward pass of a
process pays for one-off set-up (kernel selection, memory pools), which a folder
of fields pays once, not per field; that warm-up is reported on its own. Reported
per field: warm-up seconds, seconds, megapixels per second, cells found, peak RSS,
and peak RSS above the process's baseline (model loaded) and the output label
images (3 bytes a pixel).

    python benchmarks/large_image.py --out /tmp/large_image [--sizes 1024 2048 4096 8192] [--device cpu]
"""

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import cellrcnn
from cellrcnn.sample_data.field import synthetic_field
from cellrcnn.sample_data.files import write_field


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def predict_one(checkpoint: str, image: str, device: str) -> dict:
    """Runs in its own process: predict one field, report time and memory."""
    predictor = cellrcnn.Predictor.from_checkpoint(checkpoint, device=device)
    baseline = _rss_mb()
    field = cellrcnn.io.open_field(image, predictor.config.data)
    first = predictor.tiles(field.shape)[0]
    start = time.perf_counter()
    predictor.predict(field.read(first.y0, first.y1, first.x0, first.x1))  # warm-up: one tile
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    result = predictor.predict(image)
    seconds = time.perf_counter() - start
    H, W = result.cells.shape
    labels_mb = (result.cells.nbytes + result.parts.nbytes) / 2**20
    return {"side": H, "megapixels": H * W / 1e6, "warmup_s": warmup, "seconds": seconds, "mpx_per_s": H * W / 1e6 / seconds,
            "cells": len(result.table), "tiles": len(predictor.tiles((H, W))), "peak_rss_mb": _rss_mb(),
            "baseline_mb": baseline, "labels_mb": labels_mb, "above_labels_mb": _rss_mb() - baseline - labels_mb}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (fields, run, results.json)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--child", nargs=2, metavar=("CHECKPOINT", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(predict_one(*args.child, args.device)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_dir, run = args.out / "train", args.out / "run"
    if not (run / "best.pt").exists():
        for seed in range(12):  # one random crop per field and epoch: many small fields, many crops
            write_field(train_dir, synthetic_field(512, seed=100 + seed), name=f"train{seed}", overwrite=True)
        config = cellrcnn.Config(
            model=cellrcnn.ModelConfig(backbone="resnet18_fpn", weights="none", min_size=256, max_size=256,
                                       box_detections_per_img=300, rpn_batch_size_per_image=64,
                                       box_batch_size_per_image=64),
            data=cellrcnn.DataConfig(encoding="cells+parts", crop=256, channels=(0, 1), val_fraction=0.25),
            train=cellrcnn.TrainConfig(epochs=args.epochs, workers=0, device=args.device, val_every=args.epochs,
                                       accumulate=2))
        cellrcnn.fit(config, train_dir, run, quiet=True)
    rows = []
    for side in args.sizes:
        image = args.out / "fields" / f"field_{side}.tif"
        if not image.exists():
            write_field(image.parent, synthetic_field(side, seed=side), name=image.stem, pixel_size=0.325)
        done = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--device", args.device,
                               "--child", str(run / "best.pt"), str(image)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        logging.info("%s", rows[-1])
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print("| side | Mpx | tiles | cells | warm-up s | s | Mpx/s | peak RSS MB | above baseline and labels MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['side']} | {r['megapixels']:.1f} | {r['tiles']} | {r['cells']} | {r['warmup_s']:.1f} | "
              f"{r['seconds']:.1f} | "
              f"{r['mpx_per_s']:.3f} | {r['peak_rss_mb']:.0f} | {r['above_labels_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
