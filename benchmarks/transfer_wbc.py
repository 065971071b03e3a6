#!/usr/bin/env python
"""Moving a WBC model to a second microscope with 10 labelled images (issue 11).

1. A source model trained on ``wbc_jtsc`` (images 001-200; 201-240 validate): ``--source RUN``
   names a finished run, else one is trained here with the setting of ``train_wbc.py``
   (resnet18-FPN from scratch, 128 px, the from-scratch recipe) for ``--source-epochs``.
2. Zero-shot: that model on ``wbc_cellavision_few`` (300x300 images, larger cells) as it is.
3. Fine-tuned from it (``model_config_from_run``, the ``--from`` of cellrcnn-finetune) on
   CellaVision 001-010, against the same architecture trained on those 10 images from
   scratch (the from-scratch recipe), same epochs, same images, same seeds; with the
   protocol's lr and a higher one, with 3 or all 5 backbone stages training, without and with
   light augmentation (``ARMS``).
4. Both scored on CellaVision 011-020, which neither saw: mean per-image Dice of
   cytoplasm, nucleus and whole cell (``cellrcnn.report.score_folder``).

Nothing is resized by hand: every model resizes its input to its own ``min_size``
(128 px here), so the 120 px and 300 px images go through one workflow as they are.
Runs are cellrcnn run folders under ``--out``; finished ones are not run again.

    python benchmarks/transfer_wbc.py --out runs/transfer --source runs/bench/ablation-long/recipe-seed0
    python benchmarks/transfer_wbc.py --out runs/transfer --source-epochs 16   # trains the source too
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
from pathlib import Path

import pandas as pd
import torch
from train_wbc import ABLATION, DATA, WBC, base_config, finished, link_split, run

import cellrcnn

CELLAVISION = WBC.parent / "wbc_cellavision_few"
PARTS = ("background", "cytoplasm", "nucleus")


def link_halves(root: Path) -> tuple[Path, Path]:
    """CellaVision 001-010 (fine-tuning) and 011-020 (held out), folders of symlinks."""
    folders = (root / "cellavision_train", root / "cellavision_test")
    for k, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1 + 10 * k, 11 + 10 * k):
            for ext in (".bmp", ".png"):
                link = folder / f"{i:03d}{ext}"
                if not link.is_symlink():
                    link.symlink_to(CELLAVISION.resolve() / f"{i:03d}{ext}")
    return folders


def score(checkpoint: Path, folder: Path, device: str) -> dict[str, float]:
    """Mean per-image Dice of each part and the whole cell over the images of ``folder``."""
    predictor = cellrcnn.Predictor.from_checkpoint(checkpoint, device=device)
    dataset = cellrcnn.CellDataset(cellrcnn.find_pairs(folder, DATA), DATA)
    summary = cellrcnn.report.score_folder(dataset, PARTS, predictor)["summary"].set_index("metric")["value"]
    return {name: float(summary[f"mean {name}_dice"]) for name in ("cytoplasm", "nucleus", "cell")}


def train_source(args, root: Path) -> Path:
    train_dir, val_dir = link_split(root / "split", WBC)
    _, model, train = ABLATION["recipe"]
    config = base_config(argparse.Namespace(epochs=args.source_epochs, device=args.device), 0, model, train, val_dir)
    run_dir = root / "source"
    run(cellrcnn.Trainer, config, train_dir, run_dir, f"source on wbc_jtsc, {args.source_epochs} epochs")
    return run_dir


#: Ways of training on the 10 CellaVision images: name -> (run folder prefix, from scratch, ModelConfig fields,
#: TrainConfig fields, DataConfig fields). Each runs for --epochs epochs on the same images and seeds.
LR01 = {"lr": 0.01, "lr_step": 10}
ARMS = {
    "fine-tuned, lr 0.001 halved every 5 epochs, top 3 backbone stages train": (
        "finetune", False, {"trainable_backbone_layers": 3}, {}, {}),
    "fine-tuned, lr 0.01 halved every 10 epochs, top 3 stages": (
        "finetune-lr01", False, {"trainable_backbone_layers": 3}, LR01, {}),
    "fine-tuned, lr 0.01, all 5 stages": ("finetune-all-lr01", False, {"trainable_backbone_layers": 5}, LR01, {}),
    "fine-tuned, lr 0.001, all 5 stages (what --from does)": ("finetune-all", False, {}, {}, {}),
    "from scratch (the from-scratch recipe)": ("scratch", True, {}, {}, {}),
    "from scratch, light augmentation": ("scratch-light", True, {}, {}, {"augment": "light"}),
}


def adapt(args, source: Path, train_dir: Path, run_dir: Path, seed: int, arm: tuple) -> float:
    """Train on ``train_dir`` from the source (or from scratch); returns the training minutes."""
    _, scratch, model_fields, train, data = arm
    model = dataclasses.replace(cellrcnn.model_config_from_run(source), **model_fields)
    if scratch:
        model = dataclasses.replace(model, weights="none", norm="auto", trainable_backbone_layers=None)
    config = cellrcnn.Config(model=model, data=dataclasses.replace(DATA, val_fraction=0.0, **data),
                             train=cellrcnn.TrainConfig(epochs=args.epochs, workers=0, device=args.device, seed=seed,
                                                        **train))
    if not finished(run_dir, args.epochs):
        resume = (run_dir / "last.pt").is_file()
        print(f"{run_dir.name}: lr {config.train.lr}, {args.epochs} epochs{' (resuming)' if resume else ''}",
              flush=True)
        cellrcnn.Trainer(config, train_dir, run_dir, resume=resume, quiet=True).train()
    return float(pd.read_csv(run_dir / "history.csv")["train_seconds"].sum() / 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", type=Path, default=None, help="a finished run trained on wbc_jtsc")
    parser.add_argument("--source-epochs", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of fine-tuning and of training from scratch")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arms", default=",".join(arm[0] for arm in ARMS.values()),
                        help=f"comma-separated, of {', '.join(arm[0] for arm in ARMS.values())}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    source = args.source or train_source(args, root)
    train_dir, test_dir = link_halves(root)
    _, jtsc_val = link_split(root / "split", WBC)

    rows = [{"model": "source, on its own microscope (wbc_jtsc 201-240)", "seed": "",
             **score(source / "best.pt", jtsc_val, args.device)},
            {"model": "zero-shot (source as it is)", "seed": "", **score(source / "best.pt", test_dir, args.device)}]
    arms = {name: arm for name, arm in ARMS.items() if arm[0] in args.arms.split(",")}
    for name, arm in arms.items():  # every seed of one arm before the next arm
        for seed in [int(s) for s in args.seeds.split(",")]:
            run_dir = root / f"{arm[0]}-seed{seed}"
            minutes = adapt(args, source, train_dir, run_dir, seed, arm)
            rows.append({"model": name, "seed": seed, **score(run_dir / "best.pt", test_dir, args.device),
                         "train_minutes": minutes})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(root / "transfer.csv", index=False)

    print(f"\n{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {args.device}; fine-tuning and scratch: {args.epochs} epochs on 10 images, "
          f"scored on CellaVision 011-020\n")
    print("| model | cytoplasm Dice | nucleus Dice | whole-cell Dice | training minutes |")
    print("| --- | --- | --- | --- | --- |")
    for model, group in table.groupby("model", sort=False):
        cells = [f"{group[c].mean():.3f}" + (f" ± {group[c].std():.3f}" if len(group) > 1 else "")
                 for c in ("cytoplasm", "nucleus", "cell")]
        minutes = f"{group['train_minutes'].mean():.1f}" if group["train_minutes"].notna().any() else ""
        print(f"| {model} | {' | '.join(cells)} | {minutes} |")


if __name__ == "__main__":
    main()
