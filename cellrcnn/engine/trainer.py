"""The Trainer: builds the model, data and optimiser from a config and runs the epochs."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..config.model import ModelConfig
from ..config.tree import Config
from ..data.dataset import CellDataset, cell_sizes
from ..io.calibration import training_pixel_size
from ..data.splits import make_splits, write_split_csv
from ..modeling.backbone import resolve_norm
from ..modeling.build import build_model
from ..modeling.checkpoint import load_checkpoint
from ..modeling.losses import balanced_part_weights
from ..utils.progress import progress
from ..utils.runtime import check_in, leave_process_group
from . import hooks
from .loop import (_to_device, epoch_seed, lr_factor, make_loader, save_checkpoint, seed_everything,
                   setup_runtime, sizes_for_cell_size, steps_per_epoch, tiled_dice, validate)

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


class Trainer:
    """The training loop, with overridable parts and hooks (after detectron2's ``DefaultTrainer``).

    ``Trainer(config, data_dir, out_dir).train()`` is what :func:`fit` runs. A
    subclass changes what is trained by overriding :meth:`build_model`,
    :meth:`build_optimizer`, :meth:`build_scheduler`, :meth:`build_datasets`,
    :meth:`build_loaders`, :meth:`validate` or :meth:`build_hooks`; a hook (see
    :mod:`cellrcnn.engine.hooks`) adds behaviour around steps and epochs without one.

    The loop: each epoch reseeds from the seed, the epoch and the process's rank
    (:func:`epoch_seed`; a resumed run matches an uninterrupted one, and under
    torchrun each rank samples its own anchors and RoIs), trains one pass with
    gradient accumulation, steps the lr
    schedule and calls the hooks. Gradient accumulation follows the usual recipe:
    each loss is divided by the number of batches accumulated, AMP gradients are
    unscaled before clipping, gradients are zeroed with ``set_to_none``. Under
    ``torchrun`` the model is wrapped in DistributedDataParallel, and the default
    hooks that validate and write files run on rank 0 only.

    Parameters
    ----------
    config : Config
        The run's settings. With ``resume`` the run folder's own config is used.
    data_dir : path or None
        Folder of images and masks (None when :meth:`build_datasets` is overridden).
    out_dir : path
        Run folder (see :func:`fit`).
    resume : bool
        Continue the run in ``out_dir`` from its ``last.pt``.
    hooks : sequence
        Hooks called after the default ones (:meth:`build_hooks`).
    quiet : bool
        No progress bars.
    command : sequence of str, optional
        The command line that started the run, recorded in ``config.json``.

    Attributes
    ----------
    model, optimizer, scheduler, scaler, runtime
        Built by :meth:`train`.
    epoch : int
        The current epoch, from 0.
    iter : int
        Batches trained so far in this process, over the run.
    step_losses : dict
        The last batch's losses (floats).
    loaders : dict
        The current epoch's loaders, from :meth:`build_loaders`.
    row : dict
        The current epoch's history row; hooks add to it.
    history : list of dict
        Every epoch's row.
    improved, stop
        The epoch's flags, set by the hooks: it improved on the best metric
        (:class:`~cellrcnn.engine.hooks.BestCheckpoint`), training stops after it. The
        hooks keep their own state (``hook.state_dict()``).
    """

    def __init__(self, config: Config, data_dir: str | os.PathLike | None, out_dir: str | os.PathLike, *,
                 resume: bool = False, hooks: Sequence = (), quiet: bool = False,
                 command: Sequence[str] | None = None) -> None:
        self.out = Path(out_dir)
        self.command = command
        self.data_dir = data_dir
        self.quiet = quiet
        self.extra_hooks = list(hooks)
        self.checkpoint: dict | None = None
        if resume:
            self.checkpoint = load_checkpoint(self.out / "last.pt")
            config = Config.from_saved(self.checkpoint["config"])
        elif (self.out / "last.pt").exists():
            raise FileExistsError(f"{self.out} already holds a run (last.pt); resume it or choose another output folder")
        self.config = config
        self.epoch = self.iter = 0
        self.step_losses: dict[str, float] = {}
        self.row: dict = {}
        self.history: list[dict] = []
        self.improved = self.stop = False
        self.completed = False  # every epoch asked for has run (set at the end of train)
        self.epoch_started = 0.0
        self.datasets: dict = {}
        self.loaders: dict = {}
        self.hooks: list = []
        self.splits: dict | None = None

    # -- the parts a subclass may replace ------------------------------------------------------------------

    def build_model(self) -> torch.nn.Module:
        """The model to train. On resume the weights come from the checkpoint: nothing is fetched again."""
        return build_model(self.config.model, load_weights=self.checkpoint is None)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """SGD with momentum over the trainable parameters."""
        cfg = self.config.train
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Step decay stepped once per epoch, or a cosine stepped once per optimizer step (:func:`lr_factor`)."""
        cfg = self.config.train
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, cfg.epochs * self.steps_per_epoch,
                                                                      self.steps_per_epoch))

    @property
    def schedule_per_step(self) -> bool:
        return self.config.train.lr_schedule == "cosine"

    def build_datasets(self) -> dict:
        """``{"train": Dataset, "val": Dataset or None}``; the split is kept for ``split.csv``, written with
        ``config.json`` once setup has passed."""
        splits = self.splits = make_splits(self.data_dir, self.config.data)
        train = CellDataset(splits["train"], self.config.data, augment=self.config.data.augment,
                            seed=self.config.train.seed)
        # Seeded: with crops, validation sees the same windows every epoch.
        val = CellDataset(splits["val"], self.config.data, seed=self.config.train.seed) if splits["val"] else None
        return {"train": train, "val": val}

    def build_loaders(self, epoch: int) -> dict:
        """The epoch's loaders: their order and augmentation depend only on the seed and the epoch."""
        cfg = self.config.train
        if hasattr(self.datasets["train"], "set_epoch"):  # its augmentation draws from (seed, epoch, image)
            self.datasets["train"].set_epoch(epoch)
        loaders = {"train": make_loader(self.datasets["train"], cfg, self.runtime, epoch, shuffle=True)}
        if self.datasets["val"] is not None:  # validation runs whole on rank 0
            single = dataclasses.replace(self.runtime, rank=0, world_size=1)
            loaders["val"] = make_loader(self.datasets["val"], cfg, single, epoch, shuffle=False)
        return loaders

    def validate(self) -> dict[str, float]:
        """Validation losses and Dice of the current model (rank 0).

        Training on crops, the losses come from the validation images' crops and
        the Dice from whole images predicted in tiles of the crop size, as
        :class:`~cellrcnn.Predictor` predicts them.
        """
        cfg, crop = self.config.train, self.config.data.crop
        result = validate(self.raw_model, self.loaders["val"], self.config.model.parts, self.runtime,
                          cfg.val_score_threshold, self.quiet, dice=crop is None)
        if crop is not None:
            result.update(tiled_dice(self.raw_model, self.config, self.datasets["val"].pairs, self.runtime.device,
                                     cfg.val_score_threshold))
        return result

    def build_hooks(self) -> list:
        """The default hooks (rank 0 only) followed by those passed in; see :mod:`cellrcnn.engine.hooks`."""
        # the hooks with state run before BestCheckpoint, which saves every hook's state
        defaults = [hooks.Validation(), hooks.HistoryWriter(), hooks.EarlyStopping(), hooks.TimeBudget(),
                    hooks.BestCheckpoint(), hooks.SizeModelFit(), hooks.EpochLog()]
        return (defaults + self.extra_hooks) if self.runtime.is_main else self.extra_hooks

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def has_validation(self) -> bool:
        return self.datasets.get("val") is not None

    @property
    def validation_due(self) -> bool:
        epoch, cfg = self.epoch + 1, self.config.train
        return epoch % cfg.val_every == 0 or epoch == cfg.epochs

    def image_name(self, index: int) -> str:
        """A training image's file, for messages."""
        pairs = getattr(self.datasets["train"], "pairs", None)
        return str(pairs[index].image) if pairs is not None else f"image {index}"

    @property
    def resume_hint(self) -> str:
        """What a stopped run keeps and how to go on, for a process stopped by another's failure."""
        return f"{self.out / 'last.pt'} holds the last finished epoch: --resume continues from it"

    def checkpoint_state(self) -> dict:
        """Everything :meth:`train` needs to resume after the current epoch."""
        return {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch + 1,
                "config": self.config.to_dict(), "history": self.history,
                "hooks": {key: hook.state_dict() for key, hook in self._hook_keys().items()
                          if hasattr(hook, "state_dict")}}

    def _hook_keys(self) -> dict:
        """Each hook under a key stable across runs: its class name, numbered when a class repeats."""
        keys: dict = {}
        for hook in self.hooks:
            name = type(hook).__name__
            key, n = name, 1
            while key in keys:
                n += 1
                key = f"{name}.{n}"
            keys[key] = hook
        return keys

    def _restore_hooks(self, state: dict) -> None:
        """Give each hook its saved state; checkpoints from before hooks kept state hold ``best`` and
        ``since_best`` at the top, which both metric hooks take."""
        saved = state.get("hooks")
        legacy = {"best": state.get("best"), "since_best": state.get("since_best", 0)}
        for key, hook in self._hook_keys().items():
            if hasattr(hook, "load_state_dict"):
                hook.load_state_dict(saved[key] if saved is not None and key in saved else legacy)

    def save_checkpoint(self, path: Path, state: dict) -> None:
        save_checkpoint(path, state)

    # -- the loop --------------------------------------------------------------------------------------------

    def train(self) -> pd.DataFrame:
        """Run the remaining epochs; returns the history (one row per epoch)."""
        cfg = self.config.train
        self.runtime = setup_runtime(cfg)
        if self.runtime.device.type == "cpu" and self.runtime.is_main:
            logger.warning("training on the CPU: expect minutes per epoch even for small data; a CUDA GPU is "
                           "10-50x faster (train.device='auto' picks it when present)")
        if cfg.accumulate % (cfg.batch_size * self.runtime.world_size):
            raise ValueError(f"accumulate ({cfg.accumulate} images) must be a multiple of batch_size x processes "
                             f"({cfg.batch_size} x {self.runtime.world_size})")
        try:
            return self._train()
        finally:
            leave_process_group(self.runtime)

    def _setup(self) -> None:
        """Everything that can fail on bad input (data, weights) happens before the first file is written."""
        cfg = self.config.train
        seed_everything(cfg.seed)
        self.datasets = self.build_datasets()
        if self.datasets["val"] is None and self.runtime.is_main:
            logger.warning("no validation images (val_fraction 0 and no val_dir): best.pt follows the last epoch")
        if self.checkpoint is None and getattr(self.datasets["train"], "pairs", None):  # a resumed run keeps its own
            self.config = dataclasses.replace(self.config, model=self._measure_scale(self.datasets["train"].pairs))
        self.steps_per_epoch = steps_per_epoch(len(self.datasets["train"]), cfg, self.runtime.world_size)
        if cfg.steps is not None:  # whole epochs, as many as the steps need; config.json records them
            epochs = math.ceil(cfg.steps / self.steps_per_epoch)
            if epochs != cfg.epochs and self.runtime.is_main:
                logger.info("%d optimizer steps of %d images: %d epochs of %d steps over %d training images",
                            cfg.steps, cfg.accumulate, epochs, self.steps_per_epoch, len(self.datasets["train"]))
            self.config = dataclasses.replace(self.config, train=dataclasses.replace(cfg, epochs=epochs))
            cfg = self.config.train
        self.raw_model = self.build_model().to(self.runtime.device)
        if self.checkpoint is None:  # record the normalisation built (read off the model, not the weights file again)
            model = resolve_norm(self.config.model, self.raw_model.state_dict())
            self.config = dataclasses.replace(self.config, model=model)
        self.optimizer = self.build_optimizer(self.raw_model)
        self.scheduler = self.build_scheduler(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.runtime.device.type, enabled=self.runtime.amp)
        start = 0
        if self.checkpoint:
            state = self.checkpoint
            self.raw_model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.history, start = state["history"], state["epoch"]
            if self.runtime.is_main:
                logger.info("resuming %s after epoch %d of %d", self.out, start, cfg.epochs)
        self.start_epoch = start
        self.model = self.raw_model
        if self.runtime.distributed:
            device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.raw_model, device_ids=device_ids)
        if self.runtime.is_main:  # the first files of the run: every input has been read by now
            self.out.mkdir(parents=True, exist_ok=True)
            if self.splits is not None:
                write_split_csv(self.out / "split.csv", self.splits, overwrite=True)
            if self.checkpoint is None:  # a resumed run keeps the command that started it
                self.config.to_json(self.out / "config.json", command=self.command)

    def _measure_scale(self, pairs) -> ModelConfig:
        """The model config with the scale of training recorded (``input_scale``, ``cell_size``), for prediction.

        Also says how large cells are once images (or crops) are resized to
        ``min_size``, and what to set when the anchors (32-512 px) miss them:
        images of any size go through one workflow, but cell size in pixels matters.
        """
        model, crop = self.config.model, self.config.data.crop
        table = cell_sizes(pairs, self.config.data)
        if table.empty:
            return model
        if model.target_cell_size is not None:
            min_size, max_size = sizes_for_cell_size(table, model.target_cell_size, crop)
            if self.runtime.is_main:
                logger.info("scale matched to the model adapted: cells of about %.0f px resized to span %.0f px as "
                            "in its training (min_size %d, max_size %d instead of %d, %d)",
                            float(table["cell_side"].median()), model.target_cell_size, min_size, max_size,
                            model.min_size, model.max_size)
            model = dataclasses.replace(model, min_size=min_size, max_size=max_size)
        sides = table[["height", "width"]].clip(upper=crop) if crop else table[["height", "width"]]
        # torchvision's resize: the short side to min_size unless the long side would exceed max_size
        scale = np.minimum(model.min_size / sides.min(axis=1), model.max_size / sides.max(axis=1))
        side = float((table["cell_side"] * scale).median())
        if self.runtime.is_main:
            logger.info("cells span about %.0f px (median of %d cells in %d images); resized to min_size %d%s they "
                        "span about %.0f px", float(table["cell_side"].median()), len(table), table["image"].nunique(),
                        model.min_size, f" (crops of {crop} px)" if crop else "", side)
            if not 32 <= side <= 512:
                factor = 128 / side
                sizes = [max(32, int(round(s * factor / 32)) * 32) for s in (model.min_size, model.max_size)]
                logger.warning("cells of about %.0f px after resizing fall outside the anchor sizes (32-512 px); set "
                               "model.min_size and model.max_size to about %d and %d so they span about "
                               "128 px", side, *sizes)
        if model.part_weights == "auto":
            model = dataclasses.replace(model, part_weights=self._balanced_part_weights(table, model))
        pixel_size = training_pixel_size([pair.image for pair in pairs], self.config.data.pixel_size,
                                         say=self.runtime.is_main)
        diameter = None if pixel_size is None else float(table["cell_side"].median()) * pixel_size
        model = dataclasses.replace(model, pixel_size=pixel_size, cell_diameter_um=diameter)
        per_image = scale.groupby(table["image"]).first()
        single = bool((table.groupby("image").size() == 1).all()) and not crop  # a crop may cut out neighbours
        if single and self.runtime.is_main:
            logger.info("every training image holds one cell: prediction will keep the largest complete cell of "
                        "each image unless told otherwise")
        return dataclasses.replace(model, input_scale=float(per_image.median()), cell_size=side, single_cell=single)

    def _balanced_part_weights(self, table: pd.DataFrame, model: ModelConfig) -> dict[str, float]:
        """``part_weights="auto"`` measured: each part's weight from its pixels inside the sampled cells' boxes."""
        counts = np.zeros(model.num_parts)
        for pixels in table["part_pixels"]:
            counts[:min(len(pixels), model.num_parts)] += pixels[:model.num_parts]
        weights = dict(zip(model.parts, balanced_part_weights(counts)))
        if self.runtime.is_main:
            shares = ", ".join(f"{p} {100 * c / max(counts.sum(), 1):.1f} %" for p, c in zip(model.parts, counts))
            logger.info("part weights measured (--part-weights auto): %s, from their shares of the cells' boxes (%s)",
                        ", ".join(f"{p} {w:.2f}" for p, w in weights.items()), shares)
        return weights

    def _call(self, event: str) -> None:
        for hook in self.hooks:
            method = getattr(hook, event, None)
            if method is not None:
                method(self)

    def _train(self) -> pd.DataFrame:
        self._setup()
        cfg = self.config.train  # after the setup, which resolves the epochs of a run set in steps
        runtime = self.runtime
        self.hooks = self.build_hooks()
        if self.checkpoint:
            self._restore_hooks(self.checkpoint)
        if runtime.is_main:
            val = self.datasets["val"]
            logger.info("training on %s (%s%s): %d training and %d validation images, %d epochs, %d images per "
                        "optimizer step", runtime.device, "AMP" if runtime.amp else "fp32",
                        f", {runtime.world_size} processes" if runtime.distributed else "",
                        len(self.datasets["train"]), len(val) if val else 0, cfg.epochs, cfg.accumulate)
        self._call("before_train")
        try:
            epochs = progress(range(self.start_epoch, cfg.epochs), desc="epochs", initial=self.start_epoch,
                          total=cfg.epochs, disable=self.quiet or not runtime.is_main, unit="epoch")
            for self.epoch in epochs:
                seed_everything(epoch_seed(cfg.seed, self.epoch, runtime.rank))  # a resumed run matches
                self.epoch_started = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                self.stop = self.improved = False
                self._call("before_epoch")
                self.loaders = self.build_loaders(self.epoch)
                losses = self.train_epoch(self.loaders["train"])
                if not self.schedule_per_step:
                    self.scheduler.step()
                self.row = {"epoch": self.epoch + 1, "lr": lr, "train_loss": sum(losses.values()),
                            **{f"train_{k}": v for k, v in losses.items()},
                            "train_seconds": time.perf_counter() - self.epoch_started}
                self.history.append(self.row)
                error = None
                try:
                    self._call("after_epoch")  # validation, checkpoints: a process that fails here stops the rest
                except Exception as err:  # noqa: BLE001 - raised again by check_in, once every process knows
                    error = err
                check_in(runtime, error, self.resume_hint)
                if runtime.distributed:  # every rank stops together
                    flag = torch.tensor([int(self.stop)], device=runtime.device)
                    torch_dist.broadcast(flag, src=0)
                    self.stop = bool(flag.item())
                if self.stop:
                    break
            self.completed = True  # the hooks' after_train tells a finished run from a failed or cancelled one
        finally:
            self._call("after_train")
        return pd.DataFrame(self.history)

    def train_epoch(self, loader: DataLoader) -> dict[str, float]:
        """One pass over ``loader``; returns the mean of each loss over the finite steps.

        The optimizer steps once every ``accumulate`` images (over all processes); a
        partial group at the end of the epoch is stepped with its own, smaller divisor.
        """
        cfg, runtime, model, optimizer = self.config.train, self.runtime, self.model, self.optimizer
        model.train()
        group = max(1, cfg.accumulate // (cfg.batch_size * runtime.world_size))
        n = len(loader)
        sums: dict[str, float] = {}
        counted = bad_in_row = 0
        skip_group = False
        optimizer.zero_grad(set_to_none=True)
        bar = progress(loader, desc="train", leave=False, disable=self.quiet or not runtime.is_main, unit="batch")
        batches = iter(bar)
        # Under torchrun every process checks in twice a step (an all-reduce after its batch is read, and one after
        # the forward pass, which also tells whether every loss was finite): a process that fails (a file only it
        # reads, its GPU's memory) stops the others there, each with a line.
        for i in range(n):
            start = (i // group) * group
            size = min(group, n - start)  # the last group of an epoch may be partial
            last = i == start + size - 1
            sync = contextlib.nullcontext() if last or not runtime.distributed else model.no_sync()
            with sync:
                error, loss, losses = None, None, {}
                try:  # before the forward pass, whose DDP broadcast a failed process would never join
                    self._call("before_step")
                    images, targets = next(batches)
                    images, targets = _to_device(images, targets, runtime.device)
                except Exception as err:  # noqa: BLE001 - raised again by check_in, once every process knows
                    error = err
                check_in(runtime, error, self.resume_hint)
                try:
                    with torch.autocast(runtime.device.type, dtype=torch.float16, enabled=runtime.amp):
                        losses = model(images, targets)
                        loss = sum(losses.values())
                except Exception as err:  # noqa: BLE001 - raised again by check_in, once every process knows
                    error = err
                finite = loss is not None and bool(torch.isfinite(loss.detach()))
                if check_in(runtime, error, self.resume_hint, finite):
                    bad_in_row = 0
                    self.scaler.scale(loss / size).backward()
                    counted += 1
                    self.step_losses = {k: v.item() for k, v in losses.items()}
                    for k, v in self.step_losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                else:  # every process skips together, or DDP's all-reduce would hang
                    bad_in_row += 1
                    skip_group = True
                    self.step_losses = {k: float("nan") for k in losses}
                    files = ", ".join(self.image_name(int(t["image_id"])) for t in targets)
                    if finite:
                        files = f"another process's images (this one's: {files})"
                    logger.warning("non-finite loss (%s) on %s; skipping this optimizer step",
                                   ", ".join(f"{k} {v.item():.3g}" for k, v in losses.items()), files)
                    if bad_in_row >= cfg.max_nonfinite:
                        raise FloatingPointError(
                            f"{bad_in_row} non-finite losses in a row (last on {files}); training diverged: "
                            f"lower train.lr, check those images, or set train.amp=False")
            if last:
                if not skip_group:
                    if cfg.clip_grad_norm is not None:
                        self.scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                    self.scaler.step(optimizer)
                    self.scaler.update()
                optimizer.zero_grad(set_to_none=True)
                skip_group = False
                if self.schedule_per_step:  # a skipped group still counts: the schedule follows the step count
                    self.scheduler.step()
            self.iter += 1
            self._call("after_step")
        bar.close()  # its n steps are taken: the loader's iterator is not drawn past them
        return {k: v / max(counted, 1) for k, v in sums.items()}
