#!/usr/bin/env python
"""Fine-tune on the real WBC images and compare with stock torchvision Mask R-CNN.

Images 001-200 train, 201-240 validate (through temporary symlink folders, so the
data stay in ../shared). Three runs with the same seed, backbone, input size,
sampling and training protocol (cellrcnn's trainer: batch 2, a step every 4 images,
SGD lr 0.001 halved every 5 epochs):

1. cellrcnn, cytoplasm weight 1
2. cellrcnn, cytoplasm weight 2
3. stock torchvision Mask R-CNN trained the usual way: nucleus and cytoplasm as two
   binary instance classes with their own boxes, BCE mask loss. Its prediction is
   turned into a part image (cytoplasm detections painted first, nuclei on top)
   and scored with the same Dice.

    python benchmarks/train_wbc.py                      # CPU settings below, 10 epochs each
    python benchmarks/train_wbc.py --epochs 30 --size 256 --backbone resnet50_fpn --weights coco   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torchvision.models.detection import MaskRCNN

import cellrcnn
from cellrcnn.train import Runtime, make_loader, setup_runtime, train_one_epoch
from cellrcnn.model import _build_backbone  # the same backbone for the stock model

WBC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wbc_jtsc"
PARTS = ("background", "cytoplasm", "nucleus")


def link_split(root: Path, data: Path) -> tuple[Path, Path]:
    """train/ and val/ folders of symlinks: images 1-200 and 201-240."""
    folders = (root / "train", root / "val")
    for folder in folders:
        folder.mkdir()
    for i in range(1, 241):
        folder = folders[0] if i <= 200 else folders[1]
        for ext in (".bmp", ".png"):
            (folder / f"{i:03d}{ext}").symlink_to(data / f"{i:03d}{ext}")
    return folders


class StockTargets(torch.utils.data.Dataset):
    """Each cell becomes two instances: cytoplasm (label 1) and nucleus (label 2), binary masks."""

    def __init__(self, dataset: cellrcnn.CellDataset):
        self.dataset = dataset

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


@torch.no_grad()
def stock_dice(model, dataset, threshold=0.5) -> dict[str, float]:
    model.eval()
    scores = []
    for i in range(len(dataset)):
        image, target = dataset[i]
        out = model([image])[0]
        parts = torch.zeros(image.shape[1:], dtype=torch.uint8)
        for label in (1, 2):  # cytoplasm first, the nucleus painted over it
            keep = (out["labels"] == label) & (out["scores"] >= threshold)
            if keep.any():
                parts[(out["masks"][keep, 0] > 0.5).any(dim=0)] = label
        truth = target["part_masks"].max(dim=0).values
        scores.append(cellrcnn.part_dice(parts.numpy(), truth.numpy(), PARTS))
    return pd.DataFrame(scores).mean().to_dict()


def train_stock(config: cellrcnn.Config, train_dir: Path, val_dir: Path) -> list[dict]:
    cfg = config.train
    runtime = setup_runtime(cfg)
    cellrcnn.train.seed_everything(cfg.seed)
    pairs = cellrcnn.find_pairs(train_dir, config.data)
    train = StockTargets(cellrcnn.CellDataset(pairs, config.data))
    val = StockTargets(cellrcnn.CellDataset(cellrcnn.find_pairs(val_dir, config.data), config.data))
    m = config.model
    backbone, extra = _build_backbone(m)
    model = MaskRCNN(backbone, num_classes=3, min_size=m.min_size, max_size=m.max_size, image_mean=list(m.image_mean),
                     image_std=list(m.image_std), rpn_batch_size_per_image=m.rpn_batch_size_per_image,
                     box_batch_size_per_image=m.box_batch_size_per_image, **extra).to(runtime.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cellrcnn.train.lr_factor(cfg))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp)
    history = []
    names = [str(p.image) for p in pairs]
    for epoch in range(cfg.epochs):
        cellrcnn.train.seed_everything(cfg.seed + epoch)
        start = time.perf_counter()
        train_one_epoch(model, make_loader(train, cfg, runtime, epoch, True), optimizer, scaler, cfg, runtime,
                        names, quiet=True)
        scheduler.step()
        row = {"epoch": epoch + 1, "train_seconds": time.perf_counter() - start}
        row.update(stock_dice(model, val))
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        print(f"  stock epoch {epoch + 1}: {row['train_seconds']:.0f} s, cytoplasm {row['cytoplasm_dice']:.3f}, "
              f"nucleus {row['nucleus_dice']:.3f}", flush=True)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=WBC)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=128, help="input size (min and max side)")
    parser.add_argument("--backbone", default="resnet18_fpn", choices=cellrcnn.BACKBONES)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--sampling", type=int, default=32, help="RPN anchors and RoIs sampled per image")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"cuda {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    print(f"setting: {args.backbone} weights={args.weights}, {args.size} px, sampling {args.sampling}, "
          f"{args.epochs} epochs, seed 0, batch 2, accumulate 4, lr 0.001 halved every 5 epochs")
    data = cellrcnn.DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_dir, val_dir = link_split(Path(tmp), args.data)
        data = cellrcnn.DataConfig(**{**data.__dict__, "val_dir": str(val_dir)})
        train = cellrcnn.TrainConfig(epochs=args.epochs, workers=args.workers, device=args.device)
        for name, weight in (("cellrcnn, cytoplasm weight 1", 1.0), ("cellrcnn, cytoplasm weight 2", 2.0)):
            model = cellrcnn.ModelConfig(backbone=args.backbone, weights=args.weights, min_size=args.size,
                                         max_size=args.size, part_weights={"cytoplasm": weight},
                                         rpn_batch_size_per_image=args.sampling,
                                         box_batch_size_per_image=args.sampling)
            config = cellrcnn.Config(model=model, data=data, train=train)
            print(f"{name}:", flush=True)
            history = cellrcnn.fit(config, train_dir, Path(tmp) / f"run{weight}", quiet=True,
                                   callback=lambda row, _: print(
                                       f"  epoch {row['epoch']}: {row['seconds']:.0f} s, cytoplasm "
                                       f"{row['cytoplasm_dice']:.3f}, nucleus {row['nucleus_dice']:.3f}", flush=True))
            results[name] = history.to_dict("records")
        model = cellrcnn.ModelConfig(backbone=args.backbone, weights=args.weights, min_size=args.size,
                                     max_size=args.size, rpn_batch_size_per_image=args.sampling,
                                     box_batch_size_per_image=args.sampling)
        print("stock torchvision (nucleus and cytoplasm as binary instance classes):", flush=True)
        results["torchvision, two binary classes"] = train_stock(
            cellrcnn.Config(model=model, data=data, train=train), train_dir, val_dir)

    rows = []
    for name, history in results.items():
        frame = pd.DataFrame(history)
        last = frame.iloc[-1]
        best = frame.loc[frame["part_dice"].idxmax()]
        rows.append({"run": name, "s/epoch (train+val)": frame["seconds"].mean(),
                     "train images/s": 200 / (frame["train_seconds"] if "train_seconds" in frame else
                                              frame["seconds"]).mean(),
                     "cytoplasm Dice (last)": last["cytoplasm_dice"], "nucleus Dice (last)": last["nucleus_dice"],
                     "cell Dice (last)": last["cell_dice"], "best part Dice (epoch)":
                         f"{best['part_dice']:.3f} ({int(best['epoch'])})"})
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else
          pd.DataFrame(rows).round(3).to_string(index=False))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
