"""The training loop: each epoch trains, steps the lr schedule, validates and checkpoints.

A plain loop, no hooks. Gradient accumulation follows the usual recipe: each loss
is divided by the number of batches accumulated, AMP gradients are unscaled before
clipping, gradients are zeroed with ``set_to_none``. Under ``torchrun`` the model
is wrapped in DistributedDataParallel and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from .config import Config, TrainConfig
from .data import CellDataset, collate, make_splits, write_split_csv
from .io import atomic_write
from .metrics import part_dice
from .model import build_model, load_checkpoint, resolve_device, resolve_norm, to_label_images

__all__ = ["fit", "sweep", "new_run_dir", "latest_run", "Runtime", "train_one_epoch", "validate", "lr_factor", "save_checkpoint"]

logger = logging.getLogger(__name__)

Callback = Callable[[dict, pd.DataFrame], None]


@dataclass(frozen=True)
class Runtime:
    """Where training runs: device, mixed precision and the process's place under torchrun."""

    device: torch.device
    amp: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(config: TrainConfig) -> Runtime:
    """Resolve the device and join the process group when started by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    want = resolve_device(config.device)
    device = torch.device(f"cuda:{local_rank}" if want == "cuda" and world_size > 1 else want)
    if world_size > 1 and not torch_dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    amp = config.amp if config.amp is not None else device.type == "cuda"
    if amp and device.type != "cuda":
        raise ValueError("mixed precision (--amp) needs a CUDA device; drop --amp to train on the CPU")
    return Runtime(device=device, amp=amp, rank=rank, world_size=world_size)


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the base lr at each epoch: StepLR's ``gamma ** (epoch // step)``,
    with the optional linear warm-up and lr floor."""
    if config.lr is None or config.lr_step is None or config.warmup_epochs is None:
        raise ValueError("lr, lr_step and warmup_epochs are 'auto' (None) until the TrainConfig is part of a "
                         "Config, which sets them from the model's weights; use Config(...).train")

    def factor(epoch: int) -> float:
        f = config.lr_gamma ** (epoch // config.lr_step)
        if config.warmup_epochs:
            f *= min(1.0, (epoch + 1) / (config.warmup_epochs + 1))
        return max(f, config.lr_floor / config.lr)
    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(_: int) -> None:
    seed = torch.initial_seed() % 2**32  # set by the DataLoader from its generator: reproducible
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: CellDataset, config: TrainConfig, runtime: Runtime, epoch: int, shuffle: bool) -> DataLoader:
    """A loader whose order and augmentation depend only on the seed and the epoch."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch * 101 + runtime.rank)
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


def _all_finite(loss: torch.Tensor, runtime: Runtime) -> bool:
    finite = torch.isfinite(loss.detach()).to(torch.int32)
    if runtime.distributed:  # every rank skips together, or DDP's all-reduce would hang
        torch_dist.all_reduce(finite, op=torch_dist.ReduceOp.MIN)
    return bool(finite.item())


def train_one_epoch(model, loader: DataLoader, optimizer, scaler, config: TrainConfig, runtime: Runtime,
                    names: list[str], quiet: bool = False) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each loss over the finite steps.

    The optimizer steps once every ``accumulate`` images (over all processes); a
    partial group at the end of the epoch is stepped with its own, smaller divisor.
    """
    model.train()
    per_step = config.batch_size * runtime.world_size
    group = max(1, config.accumulate // per_step)
    n = len(loader)
    sums: dict[str, float] = {}
    counted = bad_in_row = 0
    skip_group = False
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc="train", leave=False, disable=quiet or not runtime.is_main, unit="batch")
    for i, (images, targets) in enumerate(bar):
        start = (i // group) * group
        size = min(group, n - start)  # the last group of an epoch may be partial
        last = i == start + size - 1
        images, targets = _to_device(images, targets, runtime.device)
        sync = contextlib.nullcontext() if last or not runtime.distributed else model.no_sync()
        with sync:
            with torch.autocast(runtime.device.type, dtype=torch.float16, enabled=runtime.amp):
                losses = model(images, targets)
                loss = sum(losses.values())
            if _all_finite(loss, runtime):
                bad_in_row = 0
                scaler.scale(loss / size).backward()
                counted += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v.item()
            else:
                bad_in_row += 1
                skip_group = True
                files = ", ".join(names[int(t["image_id"])] for t in targets)
                logger.warning("non-finite loss (%s) on %s; skipping this optimizer step",
                               ", ".join(f"{k} {v.item():.3g}" for k, v in losses.items()), files)
                if bad_in_row >= config.max_nonfinite:
                    raise FloatingPointError(
                        f"{bad_in_row} non-finite losses in a row (last on {files}); training diverged: "
                        f"lower --lr, check those images, or turn off --amp")
        if last:
            if not skip_group:
                if config.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
            skip_group = False
    return {k: v / max(counted, 1) for k, v in sums.items()}


@contextlib.contextmanager
def _losses_without_touching_batch_norm(model):
    """Training mode (torchvision returns losses only then) with batch-norm statistics frozen."""
    was_training = model.training
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def validate(model, loader: DataLoader, parts: tuple[str, ...], runtime: Runtime, score_threshold: float = 0.5,
             quiet: bool = False) -> dict[str, float]:
    """Validation losses and mean per-image Dice of each part and of the whole cell."""
    sums: dict[str, float] = {}
    with _losses_without_touching_batch_norm(model):
        for images, targets in tqdm(loader, desc="val loss", leave=False, disable=quiet, unit="batch"):
            images, targets = _to_device(images, targets, runtime.device)
            with torch.autocast(runtime.device.type, dtype=torch.float16, enabled=runtime.amp):
                losses = model(images, targets)
            for k, v in losses.items():
                sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + v.item() * len(images)
    model.eval()
    scores: list[dict[str, float]] = []
    for images, targets in tqdm(loader, desc="val dice", leave=False, disable=quiet, unit="batch"):
        images, targets = _to_device(images, targets, runtime.device)
        with torch.autocast(runtime.device.type, dtype=torch.float16, enabled=runtime.amp):
            outputs = model(images)
        for out, target in zip(outputs, targets):
            predicted = to_label_images(out, score_threshold)["parts"].cpu().numpy()
            masks = target["masks"]
            truth = masks.max(dim=0).values if len(masks) else torch.zeros(masks.shape[1:], dtype=torch.uint8)
            scores.append(part_dice(predicted, truth.cpu().numpy(), parts))
    count = len(loader.dataset)
    result = {k: v / count for k, v in sums.items()}
    result["val_loss"] = sum(result.values())
    result.update(pd.DataFrame(scores).mean().to_dict())
    return result


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint atomically: a crash leaves the previous file whole."""
    atomic_write(path, lambda tmp: torch.save(state, tmp), overwrite=True)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _is_better(metric: str, value: float, best: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if metric == "val_loss" else value > best


def write_curves(path: Path, history: pd.DataFrame) -> None:
    """Losses and validation metrics by epoch, as a PNG."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for column, style in (("train_loss", "-"), ("val_loss", "--")):
        if column in history:
            left.plot(history["epoch"], history[column], style, marker="o", ms=3, label=column.replace("_", " "))
    left.set(xlabel="epoch", ylabel="loss (sum of all terms)", title="Losses")
    left.legend()
    for column in [c for c in history.columns if c.endswith("_dice")]:
        right.plot(history["epoch"], history[column], marker="o", ms=3, label=column.replace("_", " "))
    right.set(xlabel="epoch", ylabel="Dice", ylim=(0, 1), title="Validation Dice")
    if any(c.endswith("_dice") for c in history.columns):
        right.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite=True)
    plt.close(fig)


def fit(config: Config, data_dir: str | os.PathLike, out_dir: str | os.PathLike, resume: bool = False,
        callback: Callback | None = None, quiet: bool = False) -> pd.DataFrame:
    """Fine-tune a part-aware Mask R-CNN on a data folder.

    Parameters
    ----------
    config : Config
        Model, data and training settings. With ``resume`` the run folder's own
        config is used instead.
    data_dir : path
        Folder of images and masks (see data/README.md).
    out_dir : path
        Run folder: ``config.json``, ``split.csv``, ``history.csv``, ``curves.png``,
        ``last.pt``, ``best.pt``, ``train.log``.
    resume : bool
        Continue the run in ``out_dir`` from ``last.pt``.
    callback : callable, optional
        ``callback(row, history)`` after every epoch (rank 0), e.g. for live plots.
    quiet : bool
        No progress bars.

    Returns
    -------
    pandas.DataFrame
        One row per epoch: epoch, lr, each training loss, each validation
        loss and Dice, train_seconds (training alone) and seconds (the epoch).
    """
    out = Path(out_dir)
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(out / "last.pt")
        config = Config.from_saved(checkpoint["config"])
    elif (out / "last.pt").exists():
        raise FileExistsError(f"{out} already holds a run (last.pt); resume it or choose another output folder")
    cfg = config.train
    runtime = setup_runtime(cfg)
    main = runtime.is_main
    if runtime.device.type == "cpu" and main:
        logger.warning("training on the CPU: expect minutes per epoch even for small data; a CUDA GPU is "
                       "10-50x faster (--device auto picks it when present)")
    if cfg.accumulate % (cfg.batch_size * runtime.world_size):
        raise ValueError(f"accumulate ({cfg.accumulate} images) must be a multiple of batch_size x processes "
                         f"({cfg.batch_size} x {runtime.world_size})")
    try:
        return _fit(config, data_dir, out, checkpoint, runtime, callback, quiet)
    finally:
        if runtime.distributed and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _fit(config, data_dir, out, checkpoint, runtime, callback, quiet) -> pd.DataFrame:
    """Everything that can fail on bad input (data, weights) happens before the first file is written."""
    cfg, main = config.train, runtime.is_main
    seed_everything(cfg.seed)
    splits = make_splits(data_dir, config.data)
    train_set = CellDataset(splits["train"], config.data, augment=config.data.augment)
    val_set = CellDataset(splits["val"], config.data) if splits["val"] else None
    if val_set is None and main:
        logger.warning("no validation images (val_fraction 0 and no val_dir): best.pt follows the last epoch")

    if checkpoint is None:  # record the normalisation built, so the checkpoint rebuilds without the weights file
        config = dataclasses.replace(config, model=resolve_norm(config.model))
    # On resume the weights come from the checkpoint: the same architecture, nothing fetched again.
    model = build_model(config.model, load_weights=checkpoint is None).to(runtime.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp)
    history: list[dict] = []
    best, since_best, start = None, 0, 0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        history, best, since_best, start = (checkpoint["history"], checkpoint["best"], checkpoint["since_best"],
                                            checkpoint["epoch"])
        if main:
            logger.info("resuming %s after epoch %d of %d", out, start, cfg.epochs)
    handler = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        config.to_json(out / "config.json")
        write_split_csv(out / "split.csv", splits, overwrite=True)
        handler = logging.FileHandler(out / "train.log")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package = logging.getLogger("cellrcnn")
        package.addHandler(handler)
        level = package.level
        if package.getEffectiveLevel() > logging.INFO:
            package.setLevel(logging.INFO)  # the log file gets the epoch lines even when the console does not
    try:
        return _loop(config, out, runtime, model, optimizer, scheduler, scaler, train_set, val_set,
                     (history, best, since_best, start), callback, quiet)
    finally:
        if handler is not None:
            package.removeHandler(handler)
            package.setLevel(level)
            handler.close()


def _loop(config, out, runtime, model, optimizer, scheduler, scaler, train_set, val_set, state, callback, quiet):
    cfg, main = config.train, runtime.is_main
    history, best, since_best, start = state
    names = [str(p.image) for p in train_set.pairs]
    raw = model
    if runtime.distributed:
        model = DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    if main:
        logger.info("training on %s (%s%s): %d training and %d validation images, %d epochs, %d images per "
                    "optimizer step", runtime.device, "AMP" if runtime.amp else "fp32",
                    f", {runtime.world_size} processes" if runtime.distributed else "", len(train_set),
                    len(val_set) if val_set else 0, cfg.epochs, cfg.accumulate)

    epochs = tqdm(range(start, cfg.epochs), desc="epochs", initial=start, total=cfg.epochs,
                  disable=quiet or not main, unit="epoch")
    for epoch in epochs:
        seed_everything(cfg.seed + epoch)  # each epoch depends only on the seed: a resumed run matches
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        losses = train_one_epoch(model, make_loader(train_set, cfg, runtime, epoch, shuffle=True), optimizer,
                                 scaler, cfg, runtime, names, quiet)
        scheduler.step()
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": sum(losses.values()),
               **{f"train_{k}": v for k, v in losses.items()}, "train_seconds": time.perf_counter() - started}
        due = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
        if val_set is not None and due and main:
            val_loader = make_loader(val_set, cfg, dataclasses.replace(runtime, rank=0, world_size=1), epoch, False)
            row.update(validate(raw, val_loader, config.model.parts, runtime, cfg.val_score_threshold, quiet))
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        stop = False
        if main:
            metric = row.get(cfg.best_metric) if val_set is not None else row["epoch"]
            improved = _is_better(cfg.best_metric, metric, best) if val_set is not None else True
            if improved:
                best, since_best = metric, 0
            elif due:
                since_best += 1
            state = {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                     "config": config.to_dict(), "history": history, "best": best, "since_best": since_best,
                     "rng": _rng_state()}
            save_checkpoint(out / "last.pt", state)
            if improved:
                save_checkpoint(out / "best.pt", state)
            frame = pd.DataFrame(history)
            atomic_write(out / "history.csv", lambda tmp: frame.to_csv(tmp, index=False), overwrite=True)
            write_curves(out / "curves.png", frame)
            shown = ["train_loss", "val_loss", "cytoplasm_dice", "nucleus_dice", "cell_dice"]
            logger.info("epoch %d/%d lr %.2g %s (%.0f s)%s", epoch + 1, cfg.epochs, lr,
                        " ".join(f"{k} {row[k]:.4f}" for k in shown if k in row), row["seconds"],
                        " *best*" if improved and val_set is not None else "")
            if callback is not None:
                callback(row, frame)
            stop = bool(cfg.patience) and since_best >= cfg.patience
            if stop:
                logger.info("stopping early: %s has not improved for %d validations", cfg.best_metric, cfg.patience)
        if runtime.distributed:
            flag = torch.tensor([int(stop)], device=runtime.device)
            torch_dist.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop:
            break
    return pd.DataFrame(history)


def new_run_dir(base: str | os.PathLike) -> Path:
    """A fresh run folder under ``base`` named by the time (``base/20261121-1912``), for runs started from notebooks."""
    base = Path(base)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = base / stamp, 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    return path


def latest_run(base: str | os.PathLike) -> Path:
    """The newest run folder under ``base`` that holds a ``best.pt``."""
    runs = sorted(p.parent for p in Path(base).glob("*/best.pt"))
    if not runs:
        raise FileNotFoundError(f"no finished run under {base}; train one first (notebook 02 or cellrcnn-finetune)")
    return runs[-1]


def sweep(config: Config, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
          cytoplasm_weights: tuple[float, ...] = (1.0, 2.0, 4.0), quiet: bool = True) -> pd.DataFrame:
    """Train once per cytoplasm weight (same seed and data) and tabulate each run's best validation scores.

    Returns
    -------
    pandas.DataFrame
        cytoplasm_weight, best_epoch and the Dice columns at that epoch, one row per weight.
    """
    rows = []
    metric = config.train.best_metric
    for weight in cytoplasm_weights:
        model = dataclasses.replace(config.model, part_weights={**config.model.part_weights, "cytoplasm": weight})
        history = fit(dataclasses.replace(config, model=model), data_dir,
                      Path(out_dir) / f"cytoplasm_weight_{weight:g}", quiet=quiet)
        best = history.loc[history[metric].idxmin() if metric == "val_loss" else history[metric].idxmax()]
        rows.append({"cytoplasm_weight": weight, "best_epoch": int(best["epoch"]),
                     **{k: best[k] for k in ("cytoplasm_dice", "nucleus_dice", "cell_dice", "part_dice")}})
    return pd.DataFrame(rows)
