"""The peer baseline: a plain semantic U-Net over the cell parts, trained for a fixed CPU budget.

Four levels of (3x3 conv, GroupNorm, ReLU) x 2 with 16-32-64-128 channels, transposed-conv
upsampling with skips, a 1x1 head over the parts (0.48 M parameters). Cross-entropy over
the parts, AdamW (lr 2e-3 from scratch, 5e-4 fine-tuning), batch 8, random flips and
90-degree turns, every image resized to 128 x 128. Its prediction is resized back to the
image (bilinear logits, then argmax) and scored with the same ``part_dice`` as cellrcnn.

It knows nothing of instances: its "whole cell" is every pixel that is not background, and
on an image with several cells it cannot tell them apart. That is why it is a baseline for
the part maps only.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import cellrcnn

SIZE = 128


def _block(c_in: int, c_out: int) -> nn.Sequential:
    layers = []
    for c in (c_in, c_out):
        layers += [nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """``[B, 3, 128, 128]`` float images in [0, 1] to ``[B, K, 128, 128]`` part logits."""

    def __init__(self, parts: int = 3, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.down = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip((3,) + widths[:-1], widths))
        self.up = nn.ModuleList(nn.ConvTranspose2d(c_in, c_out, 2, stride=2) for c_in, c_out in
                                zip(widths[:0:-1], widths[-2::-1]))
        self.merge = nn.ModuleList(_block(2 * c, c) for c in widths[-2::-1])
        self.head = nn.Conv2d(widths[0], parts, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1]):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def load_folder(folder: Path, data: cellrcnn.DataConfig, size: int = SIZE) -> dict:
    """Every image of ``folder`` as read for cellrcnn, with its true part map, and both resized to ``size``
    (128) a side; ``masks`` are the true per-cell part maps (cells may overlap)."""
    dataset = cellrcnn.CellDataset(cellrcnn.find_pairs(folder, data), data)
    images, truths, masks, small_images, small_parts = [], [], [], [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        _, parts = cellrcnn.report.truth_label_images(target["masks"].numpy())
        images.append(image)
        truths.append(parts)
        masks.append(target["masks"].numpy())
        small_images.append(F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=True)[0])
        small_parts.append(F.interpolate(torch.from_numpy(parts)[None, None].float(), size=(size, size),
                                         mode="nearest-exact")[0, 0].long())
    return {"images": images, "truths": truths, "masks": masks, "x": torch.stack(small_images),
            "y": torch.stack(small_parts), "size": size, "names": [p.name for p in dataset.pairs]}


def _augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and 90-degree turns, the same for image and labels."""
    if torch.rand((), generator=generator) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if torch.rand((), generator=generator) < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    k = int(torch.randint(4, (), generator=generator))
    return x.rot90(k, (-2, -1)), y.rot90(k, (-2, -1))


def train(model: UNet, data: dict, seconds: float, lr: float, seed: int, batch: int = 8,
          weight_decay: float = 1e-4, marks: Sequence[float] = (), at_mark: Callable[[float, int], None] | None = None
          ) -> dict:
    """Train for ``seconds`` of wall time (the loop alone); returns the steps taken and the seconds spent.

    ``at_mark(seconds, steps)`` is called once the training time passes each of ``marks`` (seconds): the model
    as a run of that budget would leave it (constant lr). Its own time is not counted."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    x_all, y_all = data["x"], data["y"]
    pending = sorted(m for m in marks if m < seconds)
    model.train()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if pending and time.perf_counter() - start >= pending[0] and at_mark is not None:
            paused = time.perf_counter()
            at_mark(pending.pop(0), steps)
            model.train()
            start += time.perf_counter() - paused
        index = torch.randint(len(x_all), (min(batch, len(x_all)),), generator=generator)
        pairs = [_augment(x_all[i], y_all[i], generator) for i in index]
        x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return {"steps": steps, "seconds": time.perf_counter() - start}


@torch.no_grad()
def predict(model: UNet, image: torch.Tensor, size: int = SIZE) -> np.ndarray:
    """Part labels uint8 ``[H, W]`` of one float image ``[3, H, W]`` at its own size (the network sees it at
    ``size`` a side)."""
    model.eval()
    H, W = image.shape[1:]
    small = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    logits = F.interpolate(model(small), size=(H, W), mode="bilinear", align_corners=False)
    return logits[0].argmax(0).to(torch.uint8).numpy()


def score(model: UNet, data: dict, parts: tuple[str, ...]) -> dict[str, float]:
    """Mean per-image Dice of each part and the whole cell, as cellrcnn is scored."""
    from cellrcnn.evaluation.metrics import edge_band_dice

    rows = []
    for image, truth in zip(data["images"], data["truths"]):
        pred = predict(model, image, data.get("size", SIZE))
        rows.append({**cellrcnn.part_dice(pred, truth, parts), **edge_band_dice(pred, truth, parts)})
    means = pd.DataFrame(rows).mean()
    names = [p for p in parts[1:]] + ["cell"]
    return {**{name: float(means[f"{name}_dice"]) for name in names},
            **{f"{name}_{region}": float(means[f"{name}_dice_{region}"]) for name in names
               for region in ("band", "interior")}}
