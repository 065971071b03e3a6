#!/usr/bin/env python
"""Overlapping cervical cells (ISBI 2014): train on 20 images, score on the other 10 with the challenge's measures.

The 30 images of ``../shared/datasets/isbi2014_cervical`` (2 to 10 cells each, more in
the later ones) are split in id order: every third image is a test image (10), the
other 20 train (a fifth of them validate). The folders
are links and filtered copies of ``annotations.json`` under ``--out``; the data stay in
../shared. Training reads the COCO file as it is (overlapping cells, nuclei tied to
their cells); no layout flag is given.

Scores, on the test images (each row written to ``OUT/scores.csv`` as it is made):

- the ISBI 2014 measures of cells: Dice over the good cells (Dice > 0.7), FNo (the share
  of true cells without a good segmentation), the pixel rates TPp and FPp;
- nucleus detection F1 (a detection finds a nucleus when 60 % of each lies in the other);
- COCO mask AP of the cells, by pycocotools against the overlapping ground truth.

The score step also draws ``OUT/overlaps.png``: the whole outlines of the predicted cells
of the three test images with the most cells (docs/isbi_overlaps.png).

Each predicted cell is scored with its whole mask, overlaps kept (``--remainders``: as
the label image holds it, where a pixel belongs to the best-scoring cell only).

    python benchmarks/isbi_cervical.py train --out runs/isbi --epochs 30
    python benchmarks/isbi_cervical.py train --out runs/isbi_n4 --epochs 20 --part-weights nucleus=4
    python benchmarks/isbi_cervical.py train --out runs/isbi_full --epochs 30 --size 256 --crop 256 --mask-size 56
    python benchmarks/isbi_cervical.py score --out runs/isbi [--remainders]
    python benchmarks/isbi_cervical.py peer --out runs/isbi --minutes 30.1   # the U-Net at 256 px
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import cellrcnn

ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "isbi2014_cervical"
PARTS = ("background", "cytoplasm", "nucleus")


def split_folders(data: Path, out: Path) -> dict[str, Path]:
    """``out/train`` and ``out/test``: links to the images and each its part of annotations.json."""
    coco = json.loads((data / "annotations.json").read_text())
    ids = sorted(image["id"] for image in coco["images"])
    test = set(ids[2::3])
    folders = {}
    for name, keep in (("train", set(ids) - test), ("test", test)):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        part = {**coco, "images": [i for i in coco["images"] if i["id"] in keep],
                "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
        (folder / "annotations.json").write_text(json.dumps(part))
        for image in part["images"]:
            link = folder / image["file_name"]
            if not link.exists():
                link.symlink_to(data / image["file_name"])
        folders[name] = folder
    return folders


def config(epochs: int, size: int, part_weights: dict[str, float] | str, crop: int | None = None,
           mask_size: int = 28, **model) -> cellrcnn.Config:
    """resnet18-FPN from scratch: whole images resized to ``size``, or full-resolution crops of ``crop`` px
    (``model``: more model settings, e.g. ``dice_weight``)."""
    return cellrcnn.Config(
        model=cellrcnn.ModelConfig(backbone="resnet18_fpn", weights="none", min_size=size, max_size=size,
                                   part_weights=part_weights, mask_size=mask_size, **model),
        data=cellrcnn.DataConfig(val_fraction=0.2, augment="light", crop=crop),
        train=cellrcnn.TrainConfig(epochs=epochs, device="auto", workers=0,
                                   **{k: v for k, v in cellrcnn.config.SCHEDULES["scratch"].items()}))


def score(out: Path, remainders: bool = False) -> pd.DataFrame:
    """Per-image and pooled scores of the test images, by :func:`cellrcnn.evaluation.report.evaluate`.

    Each predicted cell is its whole mask; ``remainders`` scores what the label image holds of it
    instead (as before cellrcnn kept whole masks).
    """
    from cellrcnn.data.dataset import CellDataset
    from cellrcnn.evaluation.report import evaluate, score_folder

    predictor = cellrcnn.Predictor.from_checkpoint(out / "run" / "best.pt")
    data = dataclasses.replace(predictor.config.data, crop=None)  # test images whole
    dataset = CellDataset(cellrcnn.find_pairs(out / "test", data), data)
    result = score_folder(dataset, predictor.parts, predictor)
    if remainders:
        result = evaluate([dataclasses.replace(i, pred_instances=None) for i in result["items"]], predictor.parts)
    else:  # the whole outlines of the three test images with the most cells
        crowded = result["per_image"].nlargest(3, "true_cells")["image"].tolist()
        pairs = {p.name: p for p in dataset.pairs}
        figure = cellrcnn.plots.show_whole_cells([predictor.predict(pairs[name].image) for name in crowded],
                                                 predictor.parts)
        figure.savefig(out / "overlaps.png", dpi=110)
    return _rows(result)


def _rows(result: dict) -> pd.DataFrame:
    """The benchmark's table of an :func:`~cellrcnn.evaluation.report.evaluate` result: one row per image and
    one of the cells pooled."""
    per_image = result["per_image"]
    rows = [{"image": r["image"], "true cells": r["true_cells"], "predicted": r["pred_cells"],
             "cell dice": r["isbi_dice"], "cell fno": r["isbi_fno"], "cell tpp": r["isbi_tpp"],
             "cell fpp": r["isbi_fpp"], "nucleus F1": r.get("nucleus_f1", np.nan)} for _, r in per_image.iterrows()]
    summary = result["summary"].set_index("metric")["value"]
    rows.append({"image": "all (cells pooled)", "true cells": int(per_image["true_cells"].sum()),
                 "predicted": int(per_image["pred_cells"].sum()), "cell dice": summary["ISBI cell Dice (good cells)"],
                 "cell fno": summary["ISBI FNo"], "cell tpp": summary["ISBI TPp"], "cell fpp": summary["ISBI FPp"],
                 "nucleus F1": summary.get("nucleus detection F1", np.nan), "cell AP": summary["COCO mask AP"],
                 "cell AP50": summary["COCO mask AP50"]})
    return pd.DataFrame(rows)


def peer(out: Path, minutes: float, size: int) -> pd.DataFrame:
    """The U-Net peer (``unet_peer.py``) trained on all 20 training images for ``minutes``, its cells the
    connected regions of its foreground (it cannot separate cells that touch or overlap), scored as cellrcnn."""
    import unet_peer
    from skimage.measure import label

    from cellrcnn.evaluation.report import Scored, evaluate, truth_label_images

    data = cellrcnn.DataConfig()
    train, test = (unet_peer.load_folder(out / name, data, size) for name in ("train", "test"))
    torch.manual_seed(0)
    model = unet_peer.UNet(len(PARTS))
    done = unet_peer.train(model, train, minutes * 60, lr=2e-3, seed=0)
    print(f"peer: {done['steps']} steps in {done['seconds'] / 60:.1f} min at {size} px", flush=True)
    items = []
    for name, image, true_parts, masks in zip(test["names"], test["images"], test["truths"], test["masks"]):
        parts = unet_peer.predict(model, image, size)
        true_cells, _ = truth_label_images(masks)
        items.append(Scored(name, true_cells, true_parts, label(parts > 0, connectivity=1), parts,
                            true_instances=masks))
    return _rows(evaluate(items, PARTS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("train", "score", "peer"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=ISBI)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=256, help="network input side (images are 512 px)")
    parser.add_argument("--part-weights", default="{}", help="part loss weights, e.g. nucleus=4, or auto "
                        "(default: all 1)")
    parser.add_argument("--dice-weight", type=float, default=None, help="weight of the part loss's Dice term "
                        "(default: the model's default)")
    parser.add_argument("--part-head", default=None, help="part head (default: the model's default)")
    parser.add_argument("--part-rois", type=int, default=None, help="positive RoIs per image that train the part "
                        "head (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--crop", type=int, default=None, help="train on random crops of this many pixels a side "
                        "(with --size the same: full resolution)")
    parser.add_argument("--mask-size", type=int, default=28, choices=(28, 56))
    parser.add_argument("--minutes", type=float, default=30.1, help="peer: training wall minutes (cellrcnn's run: "
                        "30.1)")
    parser.add_argument("--remainders", action="store_true", help="score: each predicted cell as the label image "
                        "holds it, not its whole mask (the figures before whole masks were kept)")
    args = parser.parse_args()
    print(f"machine: {platform.node() or 'vm'} {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, cuda {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
          flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    folders = split_folders(args.data, args.out)
    if args.step == "train":
        start = time.time()
        weights = cellrcnn.config.parse_field_value(dict[str, float] | str, args.part_weights, "part_weights")
        model = {k: v for k, v in (("dice_weight", args.dice_weight), ("part_head", args.part_head),
                                   ("part_rois_per_image", args.part_rois)) if v is not None}
        history = cellrcnn.fit(config(args.epochs, args.size, weights, args.crop, args.mask_size, **model),
                               folders["train"],
                               args.out / "run",
                               resume=(args.out / "run" / "last.pt").is_file())
        print(history.round(3).to_string(), f"\n{(time.time() - start) / 60:.1f} min", flush=True)
    elif args.step == "peer":
        table = peer(args.out, args.minutes, args.size)
        table.to_csv(args.out / "peer_scores.csv", index=False)
        print(table.round(3).to_string(index=False))
    else:
        table = score(args.out, args.remainders)
        table.to_csv(args.out / ("scores_remainders.csv" if args.remainders else "scores.csv"), index=False)
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
