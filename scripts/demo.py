#!/usr/bin/env python
"""The demo behind ``make demo``: fine-tune on the bundled sample, then predict with the result.

A small model (resnet18-FPN, no pretrained weights, 128 px) trains for a few epochs
on the CPU with the toolkit's protocol (2 images per batch, a step every 4 images,
lr 0.001 halved every 5 epochs). Results go to ``--out``:

- ``run/``: the run folder (config.json, split.csv, history.csv, curves.png, best.pt, ...)
- ``predictions/<image>_cells.tif`` (uint16 cell labels) and ``<image>_parts.tif``
  (uint8 part labels) for the validation images, ImageJ TIFFs.
"""

import argparse
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

import cellrcnn
import cellrcnn.io

log = logging.getLogger("demo")


def write_tiff(path: Path, array: np.ndarray, labels: list[str] | None = None) -> None:
    metadata = {"Labels": labels} if labels else {}
    cellrcnn.io.atomic_write(path, lambda tmp: tifffile.imwrite(tmp, array, imagej=True, metadata=metadata,
                                                                 compression="zlib"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="sample folder with images/ and masks/")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="results folder (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    if args.out.exists() and any(args.out.iterdir()):
        if not args.overwrite:
            log.error("%s is not empty; pass --overwrite to replace its results or choose another --out", args.out)
            return 2
        log.info("replacing earlier results in %s", args.out)
        shutil.rmtree(args.out)
    config = cellrcnn.Config(
        model=cellrcnn.ModelConfig(backbone="resnet18_fpn", weights="none", min_size=128, max_size=128,
                                   part_weights={"cytoplasm": 2.0}, rpn_batch_size_per_image=64,
                                   box_batch_size_per_image=64),
        data=cellrcnn.DataConfig(val_fraction=0.25),
        train=cellrcnn.TrainConfig(epochs=args.epochs, workers=0, device="cpu"),
    )
    try:
        history = cellrcnn.fit(config, args.data, args.out / "run")
    except cellrcnn.DataError as err:
        log.error("error: %s", err)
        return 2
    log.info("\n%s", history[["epoch", "lr", "train_loss", "val_loss", "cytoplasm_dice", "nucleus_dice",
                              "cell_dice"]].round(4).to_string(index=False))

    model, config = cellrcnn.model_from_checkpoint(args.out / "run" / "best.pt")
    split = pd.read_csv(args.out / "run" / "split.csv")
    predictions = args.out / "predictions"
    predictions.mkdir(parents=True)
    for image_path in split.loc[split["split"] == "val", "image"].map(Path):
        image = cellrcnn.read_image(image_path, config.data.percentiles)
        with torch.no_grad():
            output = model([torch.from_numpy(image).permute(2, 0, 1)])[0]
        labels = cellrcnn.to_label_images(output, score_threshold=0.5)
        write_tiff(predictions / f"{image_path.stem}_cells.tif", labels["cells"].numpy().astype(np.uint16))
        write_tiff(predictions / f"{image_path.stem}_parts.tif", labels["parts"].numpy(), list(config.model.parts))
        log.info("%s: %d cells", image_path.name, int(labels["cells"].max()))
    log.info("results in %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
