#!/usr/bin/env python
"""The demo behind ``make demo``: train on the bundled sample, predict its validation images, score them.

A small model (resnet18-FPN, 128 px, 32 sampled RoIs per image) trains from
scratch, because pretrained weights cannot be downloaded everywhere. It uses the
from-scratch recipe that cellrcnn picks by itself for ``weights="none"``: group
norm, lr 0.02 after one warm-up epoch, halved every 10 epochs (docs/model.md).
About two minutes on a 2-core CPU. Results go to ``--out``:

- ``run/``: the run folder (config.json, split.csv, history.csv, curves.png, best.pt, ...)
- ``predictions/<image>_cells.tif`` (uint16 cell labels), ``<image>_parts.tif`` (uint8
  part labels) and ``<image>_overlay.png`` (outlines of cells and nuclei on the image)
  for the held-out validation images, as ``cellrcnn-predict`` writes them;
- ``predictions/scores.csv``: Dice of each part and matching scores of each image.
"""

import argparse
import logging
import shutil
import sys
from pathlib import Path

import cellrcnn
from cellrcnn.cli.common import command, setup_logging

log = logging.getLogger("demo")


@command  # a bad sample is one line and exit code 2; a bug, a traceback to report
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="sample folder with images/ and masks/")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="results folder (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=25, help="training epochs (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    args = parser.parse_args(argv)
    setup_logging()

    if args.out.exists() and any(args.out.iterdir()):
        if not args.overwrite:
            log.error("%s is not empty; pass --overwrite to replace its results or choose another --out", args.out)
            return 2
        log.info("replacing earlier results in %s", args.out)
        shutil.rmtree(args.out)
    config = cellrcnn.Config(
        model=cellrcnn.ModelConfig(backbone="resnet18_fpn", weights="none", min_size=128, max_size=128,
                                   rpn_batch_size_per_image=32, box_batch_size_per_image=32),
        data=cellrcnn.DataConfig(val_fraction=0.25),
        train=cellrcnn.TrainConfig(epochs=args.epochs, workers=0, device=args.device, val_every=5),
    )
    run = args.out / "run"
    history = cellrcnn.fit(config, args.data, run)
    validated = history.dropna(subset=["cytoplasm_dice"])
    log.info("\n%s", validated[["epoch", "lr", "train_loss", "val_loss", "cytoplasm_dice", "nucleus_dice",
                                "cell_dice"]].round(4).to_string(index=False))

    predictor = cellrcnn.Predictor.from_checkpoint(run / "best.pt", device=args.device)
    parts = predictor.parts
    val_pairs = cellrcnn.make_splits(args.data, config.data)["val"]
    dataset = cellrcnn.CellDataset(val_pairs, config.data)
    predictions = args.out / "predictions"
    predictions.mkdir(parents=True)
    for result in predictor.predict_paths([pair.image for pair in val_pairs]):
        cellrcnn.export_prediction(result.prediction, predictions, parts, overlays=True)
    # Score the label TIFFs as written, the files a biologist takes away.
    per_image = cellrcnn.score_folder(dataset, parts, predictions)["per_image"]
    cellrcnn.io.atomic_write(predictions / "scores.csv", lambda tmp: per_image.to_csv(tmp, index=False))
    log.info("\n%s", per_image[["image", "true_cells", "pred_cells", "cytoplasm_dice", "nucleus_dice", "cell_dice",
                                "f1@0.5"]].round(3).to_string(index=False))
    mean = per_image[["cytoplasm_dice", "nucleus_dice", "cell_dice"]].mean()
    log.info("mean Dice on the %d validation images: cytoplasm %.3f, nucleus %.3f, whole cell %.3f",
             len(per_image), mean["cytoplasm_dice"], mean["nucleus_dice"], mean["cell_dice"])
    log.info("look at the predictions: %s/*_overlay.png (cell outlines and nuclei drawn on each image)", predictions)
    log.info("label images for Fiji: %s/*_cells.tif and *_parts.tif; the run (curves.png, history.csv): %s",
             predictions, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
