"""The train section: the schedule recipes, the metrics a run can keep, and TrainConfig."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .fields import LR_SCHEDULES, _check, _positive_int, _Section

__all__ = ["BEST_METRICS", "best_metrics", "SCHEDULES", "ADAPT_RECIPE", "TrainConfig"]


#: Validation metrics that can choose the best checkpoint whatever the parts; ``<part>_dice`` of each
#: foreground part too (:func:`best_metrics`).
BEST_METRICS = ("part_dice", "cell_dice", "val_loss")


def best_metrics(parts: Sequence[str]) -> tuple[str, ...]:
    """The validation metrics that can choose ``best.pt`` for a model predicting ``parts`` (background first)."""
    return BEST_METRICS[:2] + tuple(f"{p}_dice" for p in parts[1:]) + BEST_METRICS[2:]
#: Training settings left as None ("auto") follow the starting weights: the fine-tuning protocol for
#: pretrained weights, the from-scratch recipe for ``weights="none"`` (docs/model.md says why).
SCHEDULES = {
    "pretrained": {"lr": 0.001, "warmup_epochs": 0, "lr_step": 5},
    "scratch": {"lr": 0.02, "warmup_epochs": 1, "lr_step": 10},
}
#: The most epochs a run may ask for: a year of epochs of a few seconds. More is a typo.
MAX_EPOCHS = 100_000

#: The adaptation recipe: what ``cellrcnn-finetune --from RUN`` sets unless told otherwise. A fixed number of
#: optimizer steps (not epochs: with a few images, epochs are a handful of steps each) along a cosine from lr
#: 0.01, a step every 2 images, flips, turns, stain and scale jitter, and the new images resized so their
#: cells reach the size the source model was trained at (``model.target_cell_size``, from the run). The part
#: head is refined at twice its resolution (``"refine"``, starting from the run's own logits) and the part loss
#: has its Dice term; a run with a part head of a lab's own keeps it. Prediction grows each box by 1.15 for the
#: part head: adapted boxes fall short of the new cells. docs/benchmarks.md has the measurements.
ADAPT_RECIPE = {"train.steps": 150, "train.lr": 0.01, "train.lr_schedule": "cosine", "train.warmup_epochs": 0,
                "train.accumulate": 2, "data.augment": "adapt", "model.part_head": "refine", "model.dice_weight": 1.0,
                "model.part_box_scale": 1.15}


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The training protocol. The defaults are the protocol cellrcnn is made for.

    ``lr``, ``warmup_epochs`` and ``lr_step`` left at None are set by the
    :class:`Config` they belong to, from the model's starting weights
    (:data:`SCHEDULES`): with pretrained weights the fine-tuning protocol (lr
    0.001, no warm-up, halved every 5 epochs); from scratch (``weights="none"``)
    lr 0.02 after one warm-up epoch, halved every 10 epochs, because randomly
    initialised networks need many more large steps (docs/model.md).

    Parameters
    ----------
    epochs
        Passes over the training images.
    steps
        Optimizer steps to train for instead of ``epochs`` (None: use
        ``epochs``). The run takes the whole epochs these steps need
        (``ceil(steps / steps per epoch)``), so a schedule set in steps does not
        depend on how many images there are.
    batch_size
        Images per forward pass (per process under torchrun).
    accumulate
        Images per optimizer step; gradients of ``accumulate / batch_size``
        batches (over all processes) are summed, each loss divided by that count.
    lr, momentum, weight_decay
        SGD settings (lr None: from the weights, see above).
    lr_schedule
        ``"step"``: the lr is multiplied by ``lr_gamma`` every ``lr_step``
        epochs (StepLR). ``"cosine"``: it falls along a half cosine from ``lr``
        to ``lr_floor`` over the run's optimizer steps (``lr_step`` and
        ``lr_gamma`` unused).
    lr_step, lr_gamma
        The lr is multiplied by ``lr_gamma`` every ``lr_step`` epochs (StepLR;
        lr_step None: from the weights).
    lr_floor
        The lr never drops below this (0: no floor). The default schedule leaves
        about 1e-6 by epoch 50.
    warmup_epochs
        Epochs of linear warm-up from ``lr / (warmup_epochs + 1)`` (0: none;
        None: from the weights).
    clip_grad_norm
        Clip the gradient norm to this (after unscaling under AMP); None: no clipping.
    device
        ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    amp
        Mixed precision; None means on for CUDA, off on a CPU.
    seed
        Seed of every random number generator; with it a run is reproducible.
    workers
        Data-loading processes.
    val_every
        Validate every this many epochs (and after the last one).
    best_metric
        Validation metric choosing ``best.pt``: ``part_dice`` (mean Dice of the
        foreground parts, higher is better), ``cell_dice``, one part's Dice
        named after it (``nucleus_dice``), or ``val_loss`` (lower is better).
    best_smoothing
        ``best.pt`` is chosen by the mean of the best metric over this many
        validations in a row, which steadies the choice when it rests on a
        handful of images. None: 3 with fewer than 8 validation images, else 1.
    patience
        Stop when the best metric has not improved for this many validations (0: never).
    max_nonfinite
        Abort after this many non-finite losses in a row (single ones are skipped).
    val_score_threshold
        Detections scoring below this are left out of the validation Dice.
    max_minutes
        A budget of wall-clock training minutes (a shared machine's slot, or a
        comparison at equal time): the run stops after the last epoch that
        fits, judged by the epochs so far, and keeps its best checkpoint. The
        lr schedule is planned for ``epochs``/``steps``, so a run the budget
        cuts short stops partway through it. None: no budget.
    size_model
        Fit the size model when training has finished, which ``--cell-diameter
        auto`` reads (cellrcnn.modeling.size_model): a few seconds for ten small
        images, about two CPU-minutes for 200. False: leave it unfitted
        (``--cell-diameter auto`` then tries a ladder of scales).
    """

    epochs: int = 100
    steps: int | None = None
    batch_size: int = 2
    accumulate: int = 4
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "step"
    lr_step: int | None = None
    lr_gamma: float = 0.5
    lr_floor: float = 0.0
    warmup_epochs: int | None = None
    clip_grad_norm: float | None = None
    device: str = "auto"
    amp: bool | None = None
    seed: int = 0
    workers: int = 2
    val_every: int = 1
    best_metric: str = "part_dice"
    best_smoothing: int | None = None
    patience: int = 0
    max_nonfinite: int = 5
    val_score_threshold: float = 0.5
    max_minutes: float | None = None
    size_model: bool = True

    def __post_init__(self) -> None:
        _check(isinstance(self.size_model, bool), f"size_model must be true or false, got {self.size_model!r}")
        for name in ("epochs", "batch_size", "accumulate", "val_every", "max_nonfinite"):
            _positive_int(name, getattr(self, name))
        for name in ("steps", "lr_step", "best_smoothing"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name, most in (("epochs", MAX_EPOCHS), ("steps", MAX_EPOCHS * 100)):  # a typo, not a plan
            value = getattr(self, name)
            if value is not None:
                _check(value <= most, f"{name} must be at most {most:,}, got {value:,}")
        _check(self.lr_schedule in LR_SCHEDULES,
               f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}")
        _check(self.accumulate % self.batch_size == 0,
               f"accumulate ({self.accumulate} images) must be a multiple of batch_size ({self.batch_size})")
        for name in ("lr", "lr_gamma"):
            value = getattr(self, name)
            _check((value is None and name == "lr") or
                   (isinstance(value, (int, float)) and math.isfinite(value) and value > 0),
                   f"{name} must be a positive number, got {value!r}")
        _check(self.lr_gamma <= 1, f"lr_gamma must be at most 1 (a decay), got {self.lr_gamma}")
        for name in ("momentum", "weight_decay", "lr_floor"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                   f"{name} must be a number >= 0, got {value!r}")
        _check(self.lr is None or self.lr_floor <= self.lr,
               f"lr_floor ({self.lr_floor}) must not exceed lr ({self.lr})")
        for name in ("warmup_epochs", "patience", "seed", "workers"):
            value = getattr(self, name)
            if value is None and name == "warmup_epochs":
                continue
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                   f"{name} must be an integer >= 0, got {value!r}")
        _check(self.clip_grad_norm is None or (isinstance(self.clip_grad_norm, (int, float)) and self.clip_grad_norm > 0),
               f"clip_grad_norm must be a positive number or None, got {self.clip_grad_norm!r}")
        _check(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")),
               f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _check(self.amp is None or isinstance(self.amp, bool), f"amp must be true, false or null, got {self.amp!r}")
        _check(isinstance(self.best_metric, str) and (self.best_metric in BEST_METRICS
                                                      or self.best_metric.endswith("_dice")),
               f"best_metric must be one of {', '.join(BEST_METRICS)} or <part>_dice; got {self.best_metric!r}")
        _check(self.max_minutes is None or (isinstance(self.max_minutes, (int, float)) and not isinstance(
            self.max_minutes, bool) and math.isfinite(self.max_minutes) and self.max_minutes > 0),
               f"max_minutes must be a positive number of minutes or None, got {self.max_minutes!r}")
        _check(0.0 <= self.val_score_threshold < 1.0,
               f"val_score_threshold must lie in [0, 1), got {self.val_score_threshold}")
