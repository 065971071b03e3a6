#!/usr/bin/env python
"""Training from scratch on the real WBC images, under one fixed CPU budget.

Images 001-200 train, 201-240 validate (folders of symlinks under ``--out``, so the
data stay in ../shared). Every run uses cellrcnn's trainer and the same setting:
resnet18-FPN without pretrained weights (none can be downloaded here), images
resized to 128 px, 32 anchors and 32 RoIs sampled per image, batch 2, an optimizer
step every 4 images, no augmentation, ``--epochs`` epochs.

Experiments (each run is a cellrcnn run folder ``OUT/<experiment>/<row>-seed<k>``;
a finished run is not run again, an unfinished one resumes):

- ``ablation``: the before/after table of issue 9, one row per change:
  torchvision geometry with torchvision's predictor initialisation, exact geometry,
  + chance initialisation, + group norm (all with the fine-tuning protocol's lr 0.001
  halved every 5 epochs), + the from-scratch lr recipe (lr 0.02 after a warm-up epoch,
  halved every 10 epochs) at M = 28 and at M = 56.
- ``sweep``: cytoplasm weights 1, 2 and 4 x seeds, with the from-scratch recipe, and
  stock torchvision Mask R-CNN trained the usual way under the same budget: nucleus
  and cytoplasm as two binary instance classes (each its own box, BCE mask loss),
  painted into a part image (cytoplasm first, nuclei on top) and scored with the same Dice.
- ``table``: print the tables of every run found under ``--out``.

    python benchmarks/train_wbc.py ablation --out runs/bench --epochs 10
    python benchmarks/train_wbc.py sweep --out runs/bench --epochs 4 --seeds 0,1,2
    python benchmarks/train_wbc.py ablation --out runs/bench --epochs 30 --rows recipe --tag long
    python benchmarks/train_wbc.py table --out runs/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from pathlib import Path

import pandas as pd
import torch
from torchvision.models.detection import MaskRCNN

import cellrcnn

WBC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wbc_jtsc"
PARTS = ("background", "cytoplasm", "nucleus")
DATA = cellrcnn.DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255))

#: The training protocol (lr 0.001 halved every 5 epochs) and the from-scratch recipe (docs/model.md).
PROTOCOL = dict(cellrcnn.config.SCHEDULES["pretrained"])  # lr 0.001, no warm-up, halved every 5 epochs
RECIPE = dict(cellrcnn.config.SCHEDULES["scratch"])  # lr 0.02 after a warm-up epoch, halved every 10 epochs
OLD = {"mask_alignment": "torchvision", "predictor_init": "torchvision", "norm": "batch"}
#: Ablation rows: name -> (description, model fields, train fields). Each adds one change to the row above.
ABLATION = {
    "torchvision": ("torchvision geometry, torchvision predictor init (before)", OLD, PROTOCOL),
    "exact": ("exact geometry", {**OLD, "mask_alignment": "exact"}, PROTOCOL),
    "init": ("exact geometry + chance init", {"norm": "batch"}, PROTOCOL),
    "gn": ("+ group norm (protocol lr)", {"norm": "group"}, PROTOCOL),
    "recipe": ("+ from-scratch lr recipe (group norm, M = 28)", {"norm": "group"}, RECIPE),
    "recipe56": ("+ from-scratch lr recipe (group norm), M = 56", {"norm": "group", "mask_size": 56}, RECIPE),
}


def link_split(root: Path, data: Path) -> tuple[Path, Path]:
    """train/ (images 1-200) and val/ (201-240) folders of symlinks, made once."""
    folders = (root / "train", root / "val")
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 241):
        folder = folders[0] if i <= 200 else folders[1]
        for ext in (".bmp", ".png"):
            link = folder / f"{i:03d}{ext}"
            if not link.is_symlink():
                link.symlink_to(data.resolve() / f"{i:03d}{ext}")
    return folders


def base_config(args, seed: int, model: dict, train: dict, val_dir: Path) -> cellrcnn.Config:
    return cellrcnn.Config(
        model=cellrcnn.ModelConfig(backbone="resnet18_fpn", weights="none", min_size=128, max_size=128,
                                   rpn_batch_size_per_image=32, box_batch_size_per_image=32, **model),
        data=dataclasses.replace(DATA, val_dir=str(val_dir)),
        train=cellrcnn.TrainConfig(**{"epochs": args.epochs, "workers": 0, "device": args.device, "seed": seed,
                                      **train}))


def finished(run: Path, epochs: int) -> bool:
    history = run / "history.csv"
    return history.is_file() and len(pd.read_csv(history)) >= epochs


class PrintEpoch(cellrcnn.hooks.HookBase):
    """One line per epoch on the console."""

    def after_epoch(self, trainer) -> None:
        row = trainer.row
        print(f"  epoch {row['epoch']}: {row['train_seconds']:.0f} s train, cytoplasm {row['cytoplasm_dice']:.3f}, "
              f"nucleus {row['nucleus_dice']:.3f}, cell {row['cell_dice']:.3f}", flush=True)


def run(trainer_class, config: cellrcnn.Config, train_dir: Path, run_dir: Path, name: str) -> None:
    if finished(run_dir, config.train.epochs):
        print(f"{name}: done already ({run_dir})", flush=True)
        return
    resume = (run_dir / "last.pt").is_file()
    print(f"{name}:{' resuming' if resume else ''}", flush=True)
    trainer_class(config, train_dir, run_dir, resume=resume, hooks=[PrintEpoch()], quiet=True).train()


class StockTargets(torch.utils.data.Dataset):
    """Each cell becomes two instances: cytoplasm (label 1) and nucleus (label 2), binary masks."""

    def __init__(self, dataset: cellrcnn.CellDataset):
        self.dataset = dataset
        self.pairs = dataset.pairs

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, target = self.dataset[i]
        masks, boxes, labels = [], [], []
        for cell in target["masks"]:
            for label in (1, 2):
                m = cell == label
                if m.sum() < 5:
                    continue
                ys, xs = torch.where(m)
                boxes.append(torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32))
                masks.append(m.to(torch.uint8))
                labels.append(label)
        H, W = image.shape[1:]
        return image, {"boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
                       "labels": torch.tensor(labels, dtype=torch.int64),
                       "masks": torch.stack(masks) if masks else torch.zeros(0, H, W, dtype=torch.uint8),
                       "image_id": target["image_id"], "part_masks": target["masks"]}


class StockTrainer(cellrcnn.Trainer):
    """Stock torchvision MaskRCNN (its own heads, geometry and initialisation) on cellrcnn's backbone and loop.

    Nucleus and cytoplasm are two binary instance classes; validation paints them into a part image
    (cytoplasm first, the nucleus over it) and scores it with the same Dice as cellrcnn runs.
    """

    def build_model(self):
        m = self.config.model
        backbone, extra = cellrcnn.build_backbone(m)  # the same backbone (norm, frozen stages) as cellrcnn's
        return MaskRCNN(backbone, num_classes=3, min_size=m.min_size, max_size=m.max_size,
                        image_mean=list(m.image_mean), image_std=list(m.image_std),
                        rpn_batch_size_per_image=m.rpn_batch_size_per_image,
                        box_batch_size_per_image=m.box_batch_size_per_image, **extra)

    def build_datasets(self):
        sets = super().build_datasets()
        return {name: StockTargets(data) if data is not None else None for name, data in sets.items()}

    @torch.no_grad()
    def validate(self):
        model, scores = self.raw_model.eval(), []
        dataset = self.datasets["val"]
        for i in range(len(dataset)):
            image, target = dataset[i]
            out = model([image.to(self.runtime.device)])[0]
            parts = torch.zeros(image.shape[1:], dtype=torch.uint8)
            for label in (1, 2):  # cytoplasm first, the nucleus painted over it
                keep = (out["labels"] == label) & (out["scores"] >= self.config.train.val_score_threshold)
                if keep.any():
                    parts[(out["masks"][keep, 0] > 0.5).any(dim=0).cpu()] = label
            truth = target["part_masks"].max(dim=0).values
            scores.append(cellrcnn.part_dice(parts.numpy(), truth.numpy(), PARTS))
        return pd.DataFrame(scores).mean().to_dict()


def summarise(run: Path) -> dict:
    frame = pd.read_csv(run / "history.csv")
    last, best = frame.iloc[-1], frame.loc[frame["part_dice"].idxmax()]
    return {"epochs": len(frame), "train minutes": frame["train_seconds"].sum() / 60,
            "s/epoch (train)": frame["train_seconds"].median(),
            "cytoplasm": last["cytoplasm_dice"], "nucleus": last["nucleus_dice"], "cell": last["cell_dice"],
            "best part Dice (epoch)": f"{best['part_dice']:.3f} ({int(best['epoch'])})"}


def tables(out: Path) -> None:
    rows = []
    for history in sorted(out.glob("*/*/history.csv")):
        run = history.parent
        experiment, (row, _, seed) = run.parent.name, run.name.rpartition("-seed")
        rows.append({"experiment": experiment, "row": row, "seed": int(seed), **summarise(run)})
    if not rows:
        print(f"no runs under {out}")
        return
    frame = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    for experiment, group in frame.groupby("experiment", sort=False):
        print(f"\n## {experiment}: last epoch, per run")
        print(group.drop(columns="experiment").round(3).to_string(index=False))
        if group["seed"].nunique() > 1:
            stats = group.groupby(["row", "epochs"])[["cytoplasm", "nucleus", "cell", "train minutes"]]
            summary = stats.agg(["mean", "std"]).round(3)
            print(f"\n## {experiment}: mean and standard deviation over seeds")
            print(summary.to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("ablation", "sweep", "table"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the split links and every run")
    parser.add_argument("--data", type=Path, default=WBC)
    parser.add_argument("--epochs", type=int, default=10, help="the budget: epochs over the 200 training images")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--rows", default=None, help=f"ablation rows to run (default: all of {', '.join(ABLATION)})")
    parser.add_argument("--weights", default="1,2,4", help="sweep: cytoplasm weights (default: %(default)s)")
    parser.add_argument("--tag", default="", help="suffix of the experiment folder, e.g. for a longer budget")
    parser.add_argument("--no-stock", action="store_true", help="sweep: leave out stock torchvision")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.experiment == "table":
        tables(args.out)
        return
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"cuda {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}", flush=True)
    train_dir, val_dir = link_split(args.out / "split", args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    folder = args.out / f"{args.experiment}{'-' + args.tag if args.tag else ''}"
    if args.experiment == "ablation":
        names = args.rows.split(",") if args.rows else list(ABLATION)
        for name in names:
            description, model, train = ABLATION[name]
            for seed in seeds:
                config = base_config(args, seed, model, train, val_dir)
                run(cellrcnn.Trainer, config, train_dir, folder / f"{name}-seed{seed}", f"{description}, seed {seed}")
    else:
        _, model, train = ABLATION["recipe"]
        for seed in seeds:
            for weight in (float(w) for w in args.weights.split(",")):
                config = base_config(args, seed, {**model, "part_weights": {"cytoplasm": weight}}, train, val_dir)
                run(cellrcnn.Trainer, config, train_dir, folder / f"w{weight:g}-seed{seed}",
                    f"cytoplasm weight {weight:g}, seed {seed}")
            if not args.no_stock:
                run(StockTrainer, base_config(args, seed, model, train, val_dir), train_dir,
                    folder / f"stock-seed{seed}", f"stock torchvision, seed {seed}")
    tables(args.out)


if __name__ == "__main__":
    main()
