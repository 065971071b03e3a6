#!/usr/bin/env python
"""Images per second of predict plus export, and where the time goes.

    python benchmarks/predict_speed.py CHECKPOINT [IMAGES_DIR] [--device cpu|cuda] [--rois --overlays]

IMAGES_DIR defaults to the WBC validation images 201-240 in ../shared. Each image
runs through the stages of ``GeneralizedRCNN.forward`` one by one (transform,
backbone, RPN, RoI heads, then ``transform.postprocess``, which rescales boxes and
pastes cell and part masks), then the label images and per-cell table, then the
files (two label TIFFs, plus ROI sets and overlays on request). Goal: export (label
images, table and files) adds at most 20% to the model's own time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import cellrcnn
from cellrcnn.export.files import export_prediction
from cellrcnn.inference.measure import Prediction, measure_cells
from cellrcnn.inference.predictor import Predictor

WBC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wbc_jtsc"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("images", type=Path, nargs="?", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rois", action="store_true")
    parser.add_argument("--overlays", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the images; the first warms up")
    args = parser.parse_args()
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    model, device = predictor.model, predictor.device
    paths = ([p for p in sorted(args.images.iterdir()) if p.suffix.lower() in cellrcnn.io.IMAGE_EXTENSIONS]
             if args.images else [WBC / f"{i:03d}.bmp" for i in range(201, 241)])
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"model: {predictor.config.model.backbone} at {predictor.config.model.min_size} px; {len(paths)} images; "
          f"outputs: label TIFFs{', ROI sets' if args.rois else ''}{', overlays' if args.overlays else ''}")
    stages = {k: [] for k in ("read", "network", "postprocess (paste)", "labels + table", "write files")}
    cells = 0
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(args.repeats):
            for path in paths:
                t = [time.perf_counter()]
                image = cellrcnn.read_image(path, predictor.config.data)
                tensor = torch.from_numpy(image).permute(2, 0, 1).to(device)
                sync(device)
                t.append(time.perf_counter())
                images, _ = model.transform([tensor], scale=predictor.scale)  # as the predictor resizes
                features = model.backbone(images.tensors)
                proposals, _ = model.rpn(images, features)
                detections, _ = model.roi_heads(features, proposals, images.image_sizes)
                sync(device)
                t.append(time.perf_counter())
                output = model.transform.postprocess(detections, images.image_sizes, [image.shape[:2]])[0]
                sync(device)
                t.append(time.perf_counter())
                output = {k: v.cpu() for k, v in output.items()}
                labels = cellrcnn.to_label_images(output, 0.5)
                c, p = labels["cells"].numpy(), labels["parts"].numpy()
                table = measure_cells(c, p, image, predictor.parts, name=path.stem)
                t.append(time.perf_counter())
                export_prediction(Prediction(path.stem, image, c.astype("uint16"), p, table), out, predictor.parts,
                                  rois=args.rois, overlays=args.overlays, overwrite=True)
                t.append(time.perf_counter())
                if repeat:
                    for key, start, end in zip(stages, t, t[1:]):
                        stages[key].append(end - start)
                    cells += int(c.max())
    n = len(stages["read"])
    total = sum(sum(v) for v in stages.values())
    for key, values in stages.items():
        print(f"{key:<22} {1000 * statistics.mean(values):8.2f} ms/image  ({100 * sum(values) / total:5.1f}%)")
    model_time = sum(stages["network"]) + sum(stages["postprocess (paste)"])
    export_time = sum(stages["labels + table"]) + sum(stages["write files"])
    print(f"throughput: {n / total:.1f} images/s (predict + export), {cells / max(n, 1):.2f} cells per image")
    print(f"pasting is {100 * sum(stages['postprocess (paste)']) / model_time:.1f}% of the model's own time")
    share = 100 * export_time / model_time
    print(f"export adds {share:.1f}% to the model's own time (goal <= 20%: {'met' if share <= 20 else 'MISSED'})")


if __name__ == "__main__":
    main()
