#!/usr/bin/env python
"""End-to-end demo on the bundled sample: build the model, train briefly, predict one image.

Reads ``DATA/images/*.png`` with part-label masks in ``DATA/masks/`` (0 background,
1 cytoplasm, 2 nucleus), and writes to ``--out``: ``config.json``, ``losses.csv``
(one row per training step) and ``<stem>_parts.tif``, the predicted part labels of
one image (uint8, ImageJ TIFF). A tiny model on a CPU: the point is that every
piece runs, not the quality of a few steps of training.
"""

import argparse
import csv
import logging
import os
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from skimage.io import imread

import cellrcnn

log = logging.getLogger("demo")


def load_pair(image_path: Path, mask_path: Path) -> tuple[torch.Tensor, dict]:
    image = imread(image_path)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    tensor = torch.from_numpy(image[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)
    target = cellrcnn.whole_cell_targets(imread(mask_path), min_area=20)
    return tensor, {k: torch.from_numpy(v) for k, v in target.items()}


def combine_parts(out: dict, score_threshold: float) -> np.ndarray:
    """One part-label image: detections by descending score, each pixel claimed once."""
    labels = np.zeros(out["part_masks"].shape[1:], dtype=np.uint8)
    for i in torch.argsort(out["scores"], descending=True):
        if out["scores"][i] < score_threshold:
            break
        cell = out["part_masks"][i].numpy()
        free = (labels == 0) & (cell > 0)
        labels[free] = cell[free]
    return labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="sample folder with images/ and masks/")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="results folder (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=4, help="training steps of 2 images (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    images = sorted((args.data / "images").glob("*.png"))
    if not images:
        log.error("no images found in %s; expected PNG files under images/ (run `make sample` to write them)",
                  args.data / "images")
        return 2
    missing = [p.name for p in images if not (args.data / "masks" / p.name).is_file()]
    if missing:
        log.error("no mask in %s for %s; each image needs a mask of the same name", args.data / "masks", missing[0])
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        if not args.overwrite:
            log.error("%s is not empty; pass --overwrite to replace its results or choose another --out", args.out)
            return 2
        log.info("replacing earlier results in %s", args.out)
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    config = cellrcnn.Config(model=cellrcnn.ModelConfig(
        backbone="resnet18_fpn", weights="none", min_size=128, max_size=128,
        part_weights={"cytoplasm": 2.0}, rpn_batch_size_per_image=64, box_batch_size_per_image=64))
    config.to_json(args.out / "config.json")
    model = cellrcnn.build_model(config.model)
    pairs = [load_pair(p, args.data / "masks" / p.name) for p in images]
    log.info("%d images, %d cells; model %s with parts %s", len(pairs), sum(len(t["boxes"]) for _, t in pairs),
             config.model.backbone, ", ".join(config.model.parts))

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    rows = []
    model.train()
    for step in range(args.steps):
        batch = [pairs[(2 * step + j) % len(pairs)] for j in range(2)]
        losses = model([b[0] for b in batch], [b[1] for b in batch])
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        rows.append({"step": step + 1, **{k: round(v.item(), 5) for k, v in losses.items()}})
        log.info("step %d: %s", step + 1, ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items() if k != "step"))
    tmp = args.out / "losses.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, args.out / "losses.csv")

    model.eval()
    with torch.no_grad():
        out = model([pairs[0][0]])[0]
    parts = combine_parts(out, score_threshold=0.05)
    target = args.out / f"{images[0].stem}_parts.tif"
    tmp = target.with_name(target.name + ".tmp")
    tifffile.imwrite(tmp, parts, imagej=True, metadata={"Labels": list(config.model.parts)}, compression="zlib")
    os.replace(tmp, target)
    fractions = np.bincount(parts.ravel(), minlength=config.model.num_parts) / parts.size
    log.info("predicted %d detections on %s; part fractions %s", len(out["boxes"]), images[0].name,
             ", ".join(f"{n} {f:.2f}" for n, f in zip(config.model.parts, fractions)))
    log.info("results in %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
