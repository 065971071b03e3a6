"""The parts of a training loop: runtime, lr schedule, seeds, loaders, steps and validation."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from ..config.train import TrainConfig
from ..config.tree import Config
from ..data.dataset import CellDataset, collate, derived_seed, load_sample
from ..evaluation.metrics import part_dice
from ..inference.predictor import Predictor
from ..modeling.paste import to_label_images
from ..utils.compat import BatchNormBase
from ..utils.files import atomic_write
from ..utils.progress import progress
from ..utils.runtime import Runtime, join_process_group

__all__ = ["validate", "lr_factor", "steps_per_epoch", "sizes_for_cell_size", "save_checkpoint", "epoch_seed"]


def setup_runtime(config: TrainConfig) -> Runtime:
    """Resolve the device and join the process group when started by torchrun."""
    runtime = join_process_group(config.device)
    amp = config.amp if config.amp is not None else runtime.device.type == "cuda"
    if amp and runtime.device.type != "cuda":
        raise ValueError("mixed precision (train.amp=True) needs a CUDA device; set train.amp=False to train on "
                         "the CPU")
    return dataclasses.replace(runtime, amp=amp)


def lr_factor(config: TrainConfig, total_steps: int | None = None, steps_per_epoch: int = 1) -> Callable[[int], float]:
    """Multiplier of the base lr, with the optional linear warm-up and lr floor.

    ``lr_schedule="step"``: a function of the epoch, StepLR's ``gamma ** (epoch // step)``.
    ``"cosine"``: a function of the optimizer step ``0 .. total_steps - 1``, a half cosine from 1
    down to ``lr_floor / lr`` after ``warmup_epochs * steps_per_epoch`` steps of warm-up.
    """
    if config.lr is None or config.lr_step is None or config.warmup_epochs is None:
        raise ValueError("lr, lr_step and warmup_epochs are 'auto' (None) until the TrainConfig is part of a "
                         "Config, which sets them from the model's weights; use Config(...).train")
    floor = config.lr_floor / config.lr
    if config.lr_schedule == "cosine":
        if total_steps is None or total_steps < 1:
            raise ValueError(f"a cosine schedule needs the run's number of optimizer steps, got {total_steps}")
        warm = config.warmup_epochs * steps_per_epoch

        def cosine(step: int) -> float:
            if step < warm:
                return max((step + 1) / (warm + 1), floor)
            t = min(1.0, (step - warm) / max(1, total_steps - warm))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
        return cosine

    def factor(epoch: int) -> float:
        f = config.lr_gamma ** (epoch // config.lr_step)
        if config.warmup_epochs:
            f *= min(1.0, (epoch + 1) / (config.warmup_epochs + 1))
        return max(f, floor)
    return factor


def steps_per_epoch(images: int, config: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps in one epoch over ``images`` training images (the last, partial group counts as one)."""
    batches = math.ceil(math.ceil(images / world_size) / config.batch_size)
    group = max(1, config.accumulate // (config.batch_size * world_size))
    return math.ceil(batches / group)


def sizes_for_cell_size(cells: pd.DataFrame, cell_size: float, crop: int | None = None) -> tuple[int, int]:
    """``(min_size, max_size)`` that resize the median cell of ``cells`` to ``cell_size`` network pixels.

    Parameters
    ----------
    cells : pandas.DataFrame
        One row per cell with the image's ``height`` and ``width`` and the cell's
        ``cell_side`` (pixels), as from :func:`cellrcnn.data.cell_sizes`.
    cell_size : float
        The wanted median cell side in network pixels.
    crop : int, optional
        Training crop side: what the network is given instead of whole images.
    """
    sides = cells[["height", "width"]].clip(upper=crop) if crop else cells[["height", "width"]]
    factor = cell_size / float(cells["cell_side"].median())
    per_image = sides.groupby(cells["image"]).first()
    short = max(16, int(round(float(per_image.min(axis=1).median()) * factor)))
    long = max(short, int(round(float(per_image.max(axis=1).median()) * factor)))
    return short, long


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one process's epoch: distinct for every (seed, epoch, rank), so ranks sample different RoIs
    (detectron2 seeds each rank apart too) and a resumed run reseeds exactly as an uninterrupted one."""
    return derived_seed(seed, epoch, rank)


def _seed_worker(_: int) -> None:
    seed = torch.initial_seed() % 2**32  # set by the DataLoader from its generator: reproducible
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: CellDataset, config: TrainConfig, runtime: Runtime, epoch: int, shuffle: bool) -> DataLoader:
    """A loader whose order and augmentation depend only on the seed and the epoch."""
    generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch, runtime.rank))
    if runtime.distributed:
        sampler = DistributedSampler(dataset, runtime.world_size, runtime.rank, shuffle=shuffle, seed=config.seed)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                      collate_fn=collate, worker_init_fn=_seed_worker, generator=generator,
                      pin_memory=runtime.device.type == "cuda")


def _to_device(images, targets, device):
    images = [i.to(device, non_blocking=True) for i in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    return images, targets


@contextlib.contextmanager
def _losses_without_touching_batch_norm(model):
    """Training mode (torchvision returns losses only then) with batch-norm statistics frozen."""
    was_training = model.training
    model.train()
    norms = [m for m in model.modules() if isinstance(m, BatchNormBase)]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def validate(model, loader: DataLoader, parts: tuple[str, ...], runtime: Runtime, score_threshold: float = 0.5,
             quiet: bool = False, dice: bool = True) -> dict[str, float]:
    """Validation losses and (``dice``) mean per-image Dice of each part and of the whole cell."""
    sums: dict[str, float] = {}
    with _losses_without_touching_batch_norm(model):
        for images, targets in progress(loader, desc="val loss", leave=False, disable=quiet, unit="batch"):
            images, targets = _to_device(images, targets, runtime.device)
            with torch.autocast(runtime.device.type, dtype=torch.float16, enabled=runtime.amp):
                losses = model(images, targets)
            for k, v in losses.items():
                sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + v.item() * len(images)
    count = len(loader.dataset)
    result = {k: v / count for k, v in sums.items()}
    result["val_loss"] = sum(result.values())
    if not dice:
        return result
    model.eval()
    scores: list[dict[str, float]] = []
    for images, targets in progress(loader, desc="val dice", leave=False, disable=quiet, unit="batch"):
        images, targets = _to_device(images, targets, runtime.device)
        with torch.autocast(runtime.device.type, dtype=torch.float16, enabled=runtime.amp):
            outputs = model(images)
        for out, target in zip(outputs, targets):
            predicted = to_label_images(out, score_threshold)["parts"].cpu().numpy()
            masks = target["masks"]
            truth = masks.max(dim=0).values if len(masks) else torch.zeros(masks.shape[1:], dtype=torch.uint8)
            scores.append(part_dice(predicted, truth.cpu().numpy(), parts))
    result.update({k: float(v) for k, v in pd.DataFrame(scores).mean().items()})
    return result


def tiled_dice(model, config: Config, pairs: Sequence, device: torch.device,
               score_threshold: float = 0.5) -> dict[str, float]:
    """Mean per-image Dice of whole images predicted in tiles of ``config.data.crop`` pixels at the training
    scale, against their part maps (the model is left in eval mode; the predictor puts its settings back)."""
    predictor = Predictor(model, config, device)
    scores = []
    for pair in pairs:
        truth = load_sample(pair, config.data)["parts"]
        predicted = predictor.predict(pair.image, score_threshold=score_threshold, tile=config.data.crop).parts
        scores.append(part_dice(predicted, truth, config.model.parts))
    return {k: float(v) for k, v in pd.DataFrame(scores).mean().items()}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint atomically: a crash leaves the previous file whole."""
    atomic_write(path, lambda tmp: torch.save(state, tmp), overwrite=True)
