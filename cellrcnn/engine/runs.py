"""Runs: one-call training (fit), run folders, and sweeps over settings."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..config.tree import Config
from .trainer import Trainer

__all__ = ["fit", "sweep", "new_run_dir", "latest_run"]


def fit(config: Config, data_dir: str | os.PathLike, out_dir: str | os.PathLike, resume: bool = False,
        hooks: Sequence = (), quiet: bool = False, command: Sequence[str] | None = None) -> pd.DataFrame:
    """Fine-tune a part-aware Mask R-CNN on a data folder: ``Trainer(...).train()``.

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
    hooks : sequence
        Extra hooks (rank 0 and others alike), e.g. :class:`cellrcnn.viz.plots.LivePlot`
        or ``cellrcnn.engine.hooks.Callback(lambda row, history: ...)``.
    quiet : bool
        No progress bars.
    command : sequence of str, optional
        The command line that started the run, recorded in ``config.json``.

    Returns
    -------
    pandas.DataFrame
        One row per epoch: epoch, lr, each training loss, each validation
        loss and Dice, train_seconds (training alone) and seconds (the epoch).
    """
    return Trainer(config, data_dir, out_dir, resume=resume, hooks=hooks, quiet=quiet, command=command).train()


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
    """The run folder under ``base`` whose ``best.pt`` was written last (by time, not by name)."""
    best = list(Path(base).glob("*/best.pt"))
    if not best:
        raise FileNotFoundError(f"no finished run under {base}; train one first (notebook 02 or cellrcnn-finetune)")
    return max(best, key=lambda p: (p.stat().st_mtime_ns, p.parent.name)).parent


def sweep(config: Config, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
          weights: Sequence[float] = (1.0, 2.0, 4.0), part: str = "cytoplasm", quiet: bool = True) -> pd.DataFrame:
    """Train once per loss weight of one part (same seed and data) and tabulate each run's best validation scores.

    Parameters
    ----------
    config : Config
        The run's settings; only ``part_weights[part]`` changes between runs.
    data_dir, out_dir : path
        The data folder, and the folder for one run folder per weight (``<part>_weight_<w>``).
    weights : sequence of float
        The weights of ``part`` to try.
    part : str
        A foreground part of ``config.model.parts``.

    Returns
    -------
    pandas.DataFrame
        One row per weight: ``part``, ``weight``, ``best_epoch`` and every Dice
        column of the history (each part's, ``cell_dice``, ``part_dice``) at the
        epoch with the best ``best_metric``.
    """
    parts = config.model.parts
    if part not in parts[1:]:
        raise ValueError(f"sweep: part {part!r} is not a foreground part of the model; parts are {list(parts[1:])}")
    if config.data.val_fraction == 0 and not config.data.val_dir:
        raise ValueError("sweep compares validation scores; set a validation split (val_fraction > 0 or val_dir)")
    rows = []
    metric = config.train.best_metric
    for weight in weights:
        model = dataclasses.replace(config.model, part_weights={**config.model.weights_by_part, part: weight})
        history = fit(dataclasses.replace(config, model=model), data_dir, Path(out_dir) / f"{part}_weight_{weight:g}",
                      quiet=quiet)
        best = history.loc[history[metric].idxmin() if metric == "val_loss" else history[metric].idxmax()]
        dice = [c for c in history.columns if c.endswith("_dice")]
        rows.append({"part": part, "weight": weight, "best_epoch": int(best["epoch"]), **{c: best[c] for c in dice}})
    return pd.DataFrame(rows)
