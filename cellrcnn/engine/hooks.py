"""Trainer hooks: what happens around each training step and epoch, besides training.

A hook is any object with some of the methods of :class:`HookBase`; each gets
the :class:`~cellrcnn.engine.trainer.Trainer` and reads its state (``epoch``, ``iter``,
``row``, ``history``, ...) or sets the epoch's flags (``improved``, ``stop``).
A hook keeps its own state and gives it through ``state_dict`` /
``load_state_dict``, which the checkpoint saves and a resume restores, as
detectron2's hooks do. The trainer calls its
hooks in list order. Validation, checkpoints, the history and curves files, the
epoch log line and early stopping are hooks (:meth:`Trainer.build_hooks`), so a
subclass or a notebook can add, replace or drop any of them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from ..utils.files import atomic_write
from ..viz.plots import HISTORY_FIGSIZE, dice_columns, plot_history

__all__ = ["HookBase", "MetricWatch", "Validation", "BestCheckpoint", "HistoryWriter", "EpochLog", "EarlyStopping",
           "SizeModelFit", "Callback", "Cancel", "Cancelled"]

logger = logging.getLogger(__name__)


class HookBase:
    """No-op events; override the ones you need.

    Order within an epoch: ``before_epoch``, then for every batch
    ``before_step`` / ``after_step`` (``trainer.iter`` counts batches over the
    run, ``trainer.step_losses`` holds the batch's losses), then ``after_epoch``
    (``trainer.row`` is the epoch's history row). ``before_train`` and
    ``after_train`` frame the run.
    """

    def before_train(self, trainer) -> None:
        pass

    def before_epoch(self, trainer) -> None:
        pass

    def before_step(self, trainer) -> None:
        pass

    def after_step(self, trainer) -> None:
        pass

    def after_epoch(self, trainer) -> None:
        pass

    def after_train(self, trainer) -> None:
        pass

    def state_dict(self) -> dict:
        """What the hook must remember across a resume (saved in ``last.pt`` and ``best.pt``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` on resume."""


class Validation(HookBase):
    """Validation losses and Dice into the epoch's row, every ``val_every`` epochs and after the last."""

    def after_epoch(self, trainer) -> None:
        if trainer.has_validation and trainer.validation_due:
            trainer.row.update(trainer.validate())


def _is_better(metric: str, value, best) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if metric == "val_loss" else value > best


#: Below this many validation images, ``best.pt`` is chosen by a mean over validations (``best_smoothing``).
FEW_VALIDATION_IMAGES = 8


def smoothed_metric(history: list[dict], metric: str, window: int) -> float | None:
    """The mean of ``metric`` over the last ``window`` validations in ``history`` (fewer at the start);
    None when the last row was not validated."""
    if not history or history[-1].get(metric) is None:
        return None
    values = [row[metric] for row in history if row.get(metric) is not None][-window:]
    return float(sum(values) / len(values))


class MetricWatch:
    """The best value of ``best_metric`` so far and the validations since it: the state of the hooks that follow
    the metric (each keeps its own, so neither depends on the order the hooks run in).

    Without validation images every epoch counts as an improvement. With fewer
    than :data:`FEW_VALIDATION_IMAGES`, the Dice of one image more or less swings
    the metric from epoch to epoch, so the metric is averaged over the last
    ``best_smoothing`` validations (3 by default then) before it is compared.
    """

    def __init__(self) -> None:
        self.best = None
        self.since_best = 0

    @staticmethod
    def window(trainer) -> int:
        given = trainer.config.train.best_smoothing
        if given is not None:
            return given
        return 3 if len(trainer.datasets["val"]) < FEW_VALIDATION_IMAGES else 1

    def update(self, trainer) -> bool:
        """Take the epoch's row into account; True when it improved on the best."""
        metric = trainer.config.train.best_metric
        if trainer.has_validation:
            value = smoothed_metric(trainer.history, metric, self.window(trainer))
            improved = _is_better(metric, value, self.best)
        else:
            value, improved = trainer.row["epoch"], True
        if improved:
            self.best, self.since_best = value, 0
        elif trainer.validation_due:
            self.since_best += 1
        return improved

    def state_dict(self) -> dict:
        return {"best": self.best, "since_best": self.since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.since_best = state.get("best"), int(state.get("since_best") or 0)


class BestCheckpoint(HookBase):
    """Track the best value of ``best_metric`` (:class:`MetricWatch`); write ``last.pt`` every epoch and
    ``best.pt`` when it improves, and set ``trainer.improved`` for the epoch.

    Only ``last.pt`` carries the optimizer's state (resume reads it): in ``best.pt``, the model a user predicts
    with, shares and exports, it would be half the file.

    The checkpoint holds every hook's :meth:`~HookBase.state_dict` as it is
    when this hook runs: the default hooks that keep state run before it.
    """

    def __init__(self) -> None:
        self.watch = MetricWatch()

    def before_train(self, trainer) -> None:
        if trainer.has_validation and self.watch.window(trainer) > 1:
            logger.info("%d validation images: best.pt is chosen by %s averaged over %d validations in a row",
                        len(trainer.datasets["val"]), trainer.config.train.best_metric, self.watch.window(trainer))

    def after_epoch(self, trainer) -> None:
        trainer.improved = self.watch.update(trainer)
        state = trainer.checkpoint_state()
        trainer.save_checkpoint(trainer.out / "last.pt", state)
        if trainer.improved:
            trainer.save_checkpoint(trainer.out / "best.pt", {k: v for k, v in state.items() if k != "optimizer"})

    @property
    def best(self):
        """The best (smoothed) value of ``best_metric`` so far; None before any."""
        return self.watch.best

    def state_dict(self) -> dict:
        return self.watch.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.watch.load_state_dict(state)


class SizeModelFit(HookBase):
    """When training has finished, fit the size model (:mod:`cellrcnn.modeling.size_model`) on ``best.pt``'s
    weights and the training images, and write it into ``best.pt``: ``cell_diameter="auto"`` then reads the
    scale of a new image from its style instead of trying a ladder of scales. ``last.pt`` is left as it is."""

    def after_train(self, trainer) -> None:
        from ..modeling.checkpoint import load_checkpoint
        from .size import fit_size_model

        best = trainer.out / "best.pt"
        pairs = getattr(trainer.datasets.get("train"), "pairs", None)
        if not trainer.config.train.size_model or not getattr(trainer, "completed", False) or not best.is_file() \
                or not pairs:
            return
        state = load_checkpoint(best, trainer.runtime.device)
        trainer.raw_model.load_state_dict(state["model"])
        started = time.perf_counter()
        count = fit_size_model(trainer.raw_model, pairs, trainer.config.data, trainer.config.model,
                               trainer.config.train.seed)
        if count:
            state["model"] = trainer.raw_model.state_dict()
            trainer.save_checkpoint(best, state)
            logger.info("size model fitted on %d views of %d training images in %.0f s (--cell-diameter auto "
                        "reads it)", count, len(pairs), time.perf_counter() - started)


class HistoryWriter(HookBase):
    """``history.csv`` and ``curves.png`` (the figure of :func:`cellrcnn.viz.plots.plot_history`) after every epoch.

    Also sets the row's ``seconds``: the epoch's wall time up to here.
    """

    def after_epoch(self, trainer) -> None:
        trainer.row["seconds"] = time.perf_counter() - trainer.epoch_started
        frame = pd.DataFrame(trainer.history)
        atomic_write(trainer.out / "history.csv", lambda tmp: frame.to_csv(tmp, index=False), overwrite=True)
        write_curves(trainer.out / "curves.png", frame)


def write_curves(path: Path, history: pd.DataFrame) -> None:
    """The losses and validation Dice by epoch, as a PNG."""
    # A Figure of its own, outside pyplot: a notebook's backend and figures are left alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=HISTORY_FIGSIZE)
    plot_history(history, fig.subplots(1, 2))
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite=True)


class EpochLog(HookBase):
    """One log line per epoch; the run folder's ``train.log`` gets every INFO line of the package during the run."""

    def __init__(self) -> None:
        self.handler: logging.Handler | None = None
        self.level = logging.NOTSET

    def before_train(self, trainer) -> None:
        self.handler = logging.FileHandler(trainer.out / "train.log")
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package = logging.getLogger("cellrcnn")
        package.addHandler(self.handler)
        self.level = package.level
        if package.getEffectiveLevel() > logging.INFO:
            package.setLevel(logging.INFO)  # the log file gets the epoch lines even when the console does not

    def after_epoch(self, trainer) -> None:
        row, cfg = trainer.row, trainer.config.train
        shown = ["train_loss", "val_loss"] + dice_columns(list(row))
        logger.info("epoch %d/%d lr %.2g %s (%.0f s)%s", row["epoch"], cfg.epochs, row["lr"],
                    " ".join(f"{k} {row[k]:.4f}" for k in shown if k in row),
                    time.perf_counter() - trainer.epoch_started,
                    " *best*" if trainer.improved and trainer.has_validation else "")

    def after_train(self, trainer) -> None:
        if self.handler is not None:
            package = logging.getLogger("cellrcnn")
            package.removeHandler(self.handler)
            package.setLevel(self.level)
            self.handler.close()
            self.handler = None


class TimeBudget(HookBase):
    """Stop before an epoch that would overrun ``max_minutes`` of training (wall clock, a resumed run's earlier
    minutes included), judged by the longest epoch so far."""

    def __init__(self) -> None:
        self.spent = 0.0  # seconds of the epochs finished, over every resume
        self.longest = 0.0
        self.stopped = self.budgeted = False

    def after_epoch(self, trainer) -> None:
        seconds = time.perf_counter() - trainer.epoch_started  # validation and checkpoints included
        self.spent += seconds
        self.longest = max(self.longest, seconds)
        cfg = trainer.config.train
        self.budgeted = cfg.max_minutes is not None
        if self.budgeted and self.spent + self.longest > cfg.max_minutes * 60 and \
                trainer.epoch + 1 < cfg.epochs:
            trainer.stop = self.stopped = True

    def after_train(self, trainer) -> None:
        if self.stopped:
            logger.info("stopped at the time budget: %.1f of %g minutes spent in %d epochs; another epoch would "
                        "overrun it (train.max_minutes)", self.spent / 60, trainer.config.train.max_minutes,
                        trainer.epoch + 1)

    def state_dict(self) -> dict:
        # kept only under a budget: wall-clock time is no part of a run's result, which a resume reproduces
        return {"spent": self.spent, "longest": self.longest} if self.budgeted else {}

    def load_state_dict(self, state: dict) -> None:
        self.spent, self.longest = float(state.get("spent", 0.0)), float(state.get("longest", 0.0))


class EarlyStopping(HookBase):
    """Stop once ``best_metric`` has not improved for ``patience`` validations (0: never).

    It follows the metric itself (:class:`MetricWatch`), as :class:`BestCheckpoint` does.
    """

    def __init__(self) -> None:
        self.watch = MetricWatch()
        self.stopped = False

    def after_epoch(self, trainer) -> None:
        self.watch.update(trainer)
        cfg = trainer.config.train
        if cfg.patience and self.watch.since_best >= cfg.patience:
            trainer.stop = self.stopped = True

    def after_train(self, trainer) -> None:
        if self.stopped:
            cfg = trainer.config.train
            logger.info("stopped early: %s had not improved for %d validations", cfg.best_metric, cfg.patience)

    def state_dict(self) -> dict:
        return self.watch.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.watch.load_state_dict(state)


class Callback(HookBase):
    """``function(row, history)`` after every epoch: a plain function as a hook."""

    def __init__(self, function: Callable[[dict, pd.DataFrame], None]) -> None:
        self.function = function

    def after_epoch(self, trainer) -> None:
        self.function(trainer.row, pd.DataFrame(trainer.history))


class Cancelled(Exception):
    """Training was stopped by :meth:`Cancel.cancel`; the run folder holds the last complete epoch."""


class Cancel(HookBase):
    """Stop training from another thread (a GUI's Cancel button) at the next batch.

    :meth:`cancel` may be called from any thread. The trainer then raises
    :class:`Cancelled` before its next batch: the epoch under way is dropped,
    and ``last.pt`` (written atomically at the end of each epoch) holds the last
    complete one, so ``fit(..., resume=True)`` continues from there.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def before_step(self, trainer) -> None:
        if self._event.is_set():
            raise Cancelled(f"training cancelled in epoch {trainer.epoch + 1}; {trainer.out / 'last.pt'} holds "
                            f"epoch {trainer.epoch} and resumes from there" if trainer.epoch else
                            "training cancelled in its first epoch; nothing to resume")

    before_epoch = before_step
