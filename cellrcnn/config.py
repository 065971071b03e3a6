"""Dataclass configuration, validated on construction and saved as JSON.

There is one config tree, :class:`Config`, built once (from the command line or a
notebook) and handed out section by section: the model code only ever sees a
:class:`ModelConfig`. Every section checks its own values in ``__post_init__`` so
that a bad value fails with a clear ``ValueError`` before any work starts.
"""

from __future__ import annotations

import dataclasses
import re
import json
import math
import os
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = ["BACKBONES", "WEIGHT_CHOICES", "MASK_SIZES", "MASK_ALIGNMENTS", "NORMS", "PREDICTOR_INITS", "ENCODINGS",
           "TARGETS", "AUGMENTATIONS", "LR_SCHEDULES", "PROJECTIONS", "BEST_METRICS", "best_metrics", "SCHEDULES",
           "ADAPT_RECIPE", "DataConfig", "ModelConfig", "TrainConfig",
           "Config", "parse_field_value", "rename_settings"]

#: The one table of backbones: name -> torchvision's body builder, its ImageNet weights and the COCO detection
#: weights that start a whole model (None: none published), by their torchvision names
#: (``torchvision.models.get_model_builder`` / ``get_weight``). torchvision has no Mask R-CNN on MobileNet:
#: its Faster R-CNN gives backbone, RPN and box head.
BACKBONE_TABLE = {
    "resnet50_fpn": ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"),
    "resnet50_fpn_v2": ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1"),
    "resnet18_fpn": ("resnet18", "ResNet18_Weights.IMAGENET1K_V1", None),
    "resnet34_fpn": ("resnet34", "ResNet34_Weights.IMAGENET1K_V1", None),
    "mobilenet_v3_fpn": ("mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
                         "FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1"),
}
#: Backbones that :func:`cellrcnn.build_model` can build.
BACKBONES = tuple(BACKBONE_TABLE)
#: Named weight choices; anything else is taken as the path of a state dict or of a run's checkpoint.
WEIGHT_CHOICES = ("coco", "imagenet", "none")
#: Mask encodings: part map; cell instances + part map; cell instances + nucleus instances.
ENCODINGS = ("parts", "cells+parts", "cells+nuclei")
#: Which cells of an image become targets.
TARGETS = ("whole-cell", "largest")
#: Augmentation presets ("adapt": the adaptation recipe's flips, turns, stain and scale jitter).
AUGMENTATIONS = ("none", "light", "adapt", "strong")
#: How the lr falls: by ``lr_gamma`` every ``lr_step`` epochs, or along a half cosine over the optimizer steps.
LR_SCHEDULES = ("step", "cosine")
#: What becomes of a Z-stack or time series: refused, or its maximum projection.
PROJECTIONS = ("none", "max")
#: Backbones for which torchvision publishes COCO detection weights.
COCO_BACKBONES = tuple(name for name, (_, _, coco) in BACKBONE_TABLE.items() if coco)
#: Resolutions of the predicted part masks (the mask head pools at half of it, then upsamples 2x).
MASK_SIZES = (28, 56)
#: Mask geometry: pixel-exact (aligned RoIAlign, centre-sampled paste) or torchvision's, bit for bit.
MASK_ALIGNMENTS = ("exact", "torchvision")
#: Normalisation layers: chosen from the weights, batch norm, group norm, frozen batch norm.
NORMS = ("auto", "batch", "group", "frozen")
#: Initialisation of freshly created predictors.
PREDICTOR_INITS = ("chance", "torchvision")
#: Values of model fields added after the first release, for checkpoints saved without them:
#: the values that rebuild the model those checkpoints were trained as.
_LEGACY_MODEL_FIELDS = {"mask_size": 28, "mask_alignment": "torchvision", "predictor_init": "torchvision"}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _positive_int(name: str, value: Any) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"{name} must be a positive integer, got {value!r}",
    )


class _Section:
    """Shared JSON (de)serialisation for the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of JSON types (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """Build from a dict as written by :meth:`to_dict`; unknown keys are an error."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        _check(not unknown, f"unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                            f"known fields are {', '.join(known)}")
        kwargs = {}
        for name, value in values.items():
            sub = _SECTIONS.get(name)
            if sub is not None and isinstance(value, Mapping):
                value = sub.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """What :func:`cellrcnn.build_model` needs to build a part-aware Mask R-CNN.

    Parameters
    ----------
    parts
        Names of the cell parts predicted per pixel, background first.
    part_weights
        Loss weight per part name; parts not named weigh 1.0. Raising
        ``{"cytoplasm": 2.0}`` doubles the gradient from cytoplasm pixels.
    num_classes
        Number of cell classes, background excluded (1: every cell is "cell").
    backbone
        One of :data:`BACKBONES`.
    weights
        ``"coco"`` (torchvision's COCO detection weights, predictors fresh),
        ``"imagenet"`` (backbone only), ``"none"``, the path of a state dict,
        or a run's checkpoint (``runs/x/best.pt``): every layer whose shape
        matches is loaded, the rest starts fresh.
    trainable_backbone_layers
        Backbone stages left trainable; ``None`` means 3 with pretrained weights
        and all stages without, as torchvision does.
    min_size, max_size
        Images are resized so the short side is ``min_size`` unless the long side
        would exceed ``max_size``. Choose them so cells span roughly 32-512 pixels,
        the range of the default anchors; torchvision's 800 px suits photographs,
        not 120 px cell crops.
    image_mean, image_std
        Per-channel normalisation applied to images already scaled to [0, 1].
    class_specific_parts
        One set of part logits per cell class instead of one shared set.
    mask_threshold
        A pixel belongs to a detected cell when its whole-cell probability
        exceeds this; its part is then the most likely non-background part.
    rpn_batch_size_per_image, box_batch_size_per_image
        Anchors and proposals sampled per image for the RPN and box losses.
    box_detections_per_img, box_score_thresh
        At most this many detections per image, with at least this score.
    mask_size
        Resolution M of the predicted part masks, 28 or 56. The mask head pools
        RoI features at M/2 and upsamples 2x; 56 costs about 4x the mask head's
        compute and follows thin cytoplasm more closely on large cells.
    mask_alignment
        ``"exact"``: pixel-exact mask geometry (aligned RoIAlign for the RoI
        features and the target projection, a paste that samples the mask at
        each pixel centre, centre-aligned resizing of target masks).
        ``"torchvision"``: torchvision's geometry, bit for bit, which shifts
        masks by up to half a pixel and costs about 0.04 cytoplasm Dice on
        100-pixel cells. Checkpoints saved before this option load in this mode.
    norm
        Normalisation layers. ``"auto"``: group norm without pretrained weights
        (``weights="none"``: batch statistics of 2 images are too noisy to train
        from scratch), otherwise torchvision's choice for pretrained weights
        (frozen batch norm; trainable batch norm for ``resnet50_fpn_v2``).
        ``"group"`` puts GroupNorm(32) in the backbone, the FPN and the mask head.
    predictor_init
        ``"chance"``: the freshly created box and mask predictors start with
        small weights (normal, std 0.01 for class scores, 0.001 for box deltas
        and part logits, zero bias), as detectron2 does, so each loss starts
        near its chance value (ln 3 for three parts). ``"torchvision"``:
        torchvision's initialisation, whose first part loss is about 10x higher.
    input_scale, cell_size
        Measured by training, not set by hand: the median factor by which
        training resized image pixels to network pixels, and the median cell
        diameter (square root of the box area) in network pixels. Prediction
        resizes new images by ``input_scale`` (or to make cells ``cell_size``
        wide, given their diameter) instead of each image to ``min_size``.
        None (models saved before they were recorded): each image to ``min_size``.
    single_cell
        Measured by training, not set by hand: True when every training image
        sampled holds exactly one cell (single-cell crops, as in ``wbc_jtsc``).
        Prediction then keeps only the largest complete cell unless told
        otherwise: on such crops the other detections are false cells (on the
        WBC images, precision at IoU 0.5 rose from 0.73 to 1.00). None: not recorded.
    target_cell_size
        Set ``min_size`` and ``max_size`` from the training images so that their
        median cell spans this many network pixels (the adaptation recipe sets
        it to the cell size of the model it adapts, so cells of a new microscope
        reach the size that model was trained on). None: as given.
    """

    parts: tuple[str, ...] = ("background", "cytoplasm", "nucleus")
    part_weights: dict[str, float] = field(default_factory=dict)
    num_classes: int = 1
    backbone: str = "resnet50_fpn"
    weights: str = "coco"
    trainable_backbone_layers: int | None = None
    min_size: int = 512
    max_size: int = 1024
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    class_specific_parts: bool = False
    mask_threshold: float = 0.5
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_detections_per_img: int = 100
    box_score_thresh: float = 0.05
    mask_size: int = 28
    mask_alignment: str = "exact"
    norm: str = "auto"
    predictor_init: str = "chance"
    input_scale: float | None = None
    cell_size: float | None = None
    single_cell: bool | None = None
    target_cell_size: float | None = None

    def __post_init__(self) -> None:
        # Accept lists (from JSON or a notebook) but store tuples: the config is frozen.
        for name in ("parts", "image_mean", "image_std"):
            value = getattr(self, name)
            _check(isinstance(value, Sequence) and not isinstance(value, str),
                   f"{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        _check(isinstance(self.part_weights, Mapping),
               f"part_weights must map part names to weights, got {self.part_weights!r}")
        try:
            weights = {str(k): float(v) for k, v in self.part_weights.items()}
        except (TypeError, ValueError):
            raise ValueError(f"part_weights must map part names to numbers, got {self.part_weights!r}") from None
        object.__setattr__(self, "part_weights", weights)
        self._validate()

    def _validate(self) -> None:
        parts = self.parts
        _check(len(parts) >= 2, f"parts needs background and at least one cell part, got {parts}")
        _check(all(isinstance(p, str) and p for p in parts), f"part names must be non-empty strings, got {parts}")
        _check(parts[0] == "background", f"the first part must be 'background', got {parts[0]!r}")
        _check(len(set(parts)) == len(parts), f"part names must be unique, got {parts}")
        # cell_dice (the whole cell) and part_dice (the mean over parts) are metric names; a lone part may be "cell"
        _check("part" not in parts and ("cell" not in parts or len(parts) == 2),
               f"'part', and 'cell' beside other parts, cannot name a part (cell_dice is the whole cell's Dice and "
               f"part_dice the mean over parts); got {parts}")
        unknown = sorted(set(self.part_weights) - set(parts))
        _check(not unknown, f"part_weights names unknown part(s) {unknown}; parts are {list(parts)}")
        for name, w in self.part_weights.items():
            _check(math.isfinite(w) and w > 0, f"part weight for {name!r} must be a positive number, got {w}")
        _positive_int("num_classes", self.num_classes)
        _check(self.backbone in BACKBONES, f"backbone must be one of {', '.join(BACKBONES)}; got {self.backbone!r}")
        _check(isinstance(self.weights, str) and self.weights != "",
               f"weights must be one of {', '.join(WEIGHT_CHOICES)} or a file path, got {self.weights!r}")
        if self.weights == "coco":
            _check(self.backbone in COCO_BACKBONES,
                   f"torchvision has no COCO weights for {self.backbone}; use weights='imagenet' "
                   f"or pick one of {', '.join(COCO_BACKBONES)}")
        if self.trainable_backbone_layers is not None:
            top = self.backbone_stages
            _check(isinstance(self.trainable_backbone_layers, int)
                   and 0 <= self.trainable_backbone_layers <= top,
                   f"trainable_backbone_layers for {self.backbone} must be 0..{top}, "
                   f"got {self.trainable_backbone_layers!r}")
        _positive_int("min_size", self.min_size)
        _positive_int("max_size", self.max_size)
        _check(self.max_size >= self.min_size,
               f"max_size ({self.max_size}) must be at least min_size ({self.min_size})")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            _check(len(value) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value),
                   f"{name} needs 3 numbers (one per RGB channel), got {value}")
        _check(all(v > 0 for v in self.image_std), f"image_std must be positive, got {self.image_std}")
        _check(isinstance(self.class_specific_parts, bool),
               f"class_specific_parts must be true or false, got {self.class_specific_parts!r}")
        _check(0.0 < self.mask_threshold < 1.0, f"mask_threshold must lie in (0, 1), got {self.mask_threshold}")
        for name in ("rpn_batch_size_per_image", "box_batch_size_per_image", "box_detections_per_img"):
            _positive_int(name, getattr(self, name))
        _check(0.0 <= self.box_score_thresh < 1.0,
               f"box_score_thresh must lie in [0, 1), got {self.box_score_thresh}")
        _check(type(self.mask_size) is int and self.mask_size in MASK_SIZES,
               f"mask_size must be one of {', '.join(map(str, MASK_SIZES))}; got {self.mask_size!r}")
        _check(self.mask_alignment in MASK_ALIGNMENTS,
               f"mask_alignment must be one of {', '.join(MASK_ALIGNMENTS)}; got {self.mask_alignment!r}")
        _check(self.predictor_init in PREDICTOR_INITS,
               f"predictor_init must be one of {', '.join(PREDICTOR_INITS)}; got {self.predictor_init!r}")
        _check(self.norm in NORMS, f"norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        for name in ("input_scale", "cell_size", "target_cell_size"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, (int, float)) and math.isfinite(value) and value > 0),
                   f"{name} must be a positive number or None, got {value!r}")
        _check(self.single_cell is None or isinstance(self.single_cell, bool),
               f"single_cell must be true, false or null, got {self.single_cell!r}")
        _check(not (self.norm == "frozen" and self.weights == "none"),
               "norm='frozen' keeps the batch-norm statistics of pretrained weights, and weights='none' has "
               "none; use norm='group' (or 'auto') to train from scratch")
        _check(not (self.norm == "group" and self.weights in ("coco", "imagenet")),
               f"torchvision's {self.weights} weights were trained with batch norm, which norm='group' would "
               f"replace; use norm='auto' (frozen batch norm) with them, or weights='none' to train with group norm")

    def __hash__(self) -> int:  # part_weights is a dict: hash its items
        return hash(tuple(tuple(sorted(v.items())) if isinstance(v, dict) else v
                          for v in (getattr(self, f.name) for f in dataclasses.fields(self))))

    @property
    def num_parts(self) -> int:
        """Number of part labels K, background included."""
        return len(self.parts)

    @property
    def part_weight_vector(self) -> tuple[float, ...]:
        """Loss weight of each part, in the order of :attr:`parts`."""
        return tuple(self.part_weights.get(p, 1.0) for p in self.parts)

    @property
    def backbone_stages(self) -> int:
        """Stages of the backbone that can train: 6 for MobileNet, 5 for the ResNets."""
        return 6 if self.backbone == "mobilenet_v3_fpn" else 5

    @property
    def trained_backbone_layers(self) -> int:
        """``trainable_backbone_layers`` resolved: None means 3 with pretrained weights, all stages without."""
        if self.trainable_backbone_layers is not None:
            return self.trainable_backbone_layers
        return 3 if self.pretrained else self.backbone_stages

    @property
    def pretrained(self) -> bool:
        """True when training starts from any pretrained weights."""
        return self.weights != "none"

    @property
    def norm_kind(self) -> str:
        """The normalisation actually built: ``norm`` with ``"auto"`` resolved from the weights."""
        if self.norm != "auto":
            return self.norm
        if not self.pretrained:
            return "group"
        return "batch" if self.backbone == "resnet50_fpn_v2" else "frozen"

    @classmethod
    def from_saved(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """The model section of a checkpoint, rebuilt as it was trained.

        Fields added after a checkpoint was saved take the value that rebuilds
        the model it holds (torchvision geometry and initialisation, batch norm
        from scratch), not today's defaults.
        """
        legacy = dict(_LEGACY_MODEL_FIELDS)
        if values.get("weights", cls.weights) == "none":
            legacy["norm"] = "batch"  # before group norm existed, scratch models used batch norm
        return cls.from_dict({**legacy, **values})


@dataclass(frozen=True)
class DataConfig(_Section):
    """How a folder of images and masks becomes training samples.

    Parameters
    ----------
    image_glob, mask_glob
        Patterns selecting image and mask files inside their folder. Both are
        needed when image and mask share a stem and differ only by extension
        (``"*.bmp"`` and ``"*.png"`` for the WBC data).
    mask_suffix
        Suffix of the part-label mask's stem (``cell_001_masks.tif``); a mask may
        also carry the image's stem unchanged in a separate folder or extension.
    encoding
        ``"parts"``: one part-label map. ``"cells+parts"``: an instance label image
        of whole cells (``<stem><cells_suffix>``) with the part map.
        ``"cells+nuclei"``: cell instances with nucleus instances
        (``<stem><nuclei_suffix>``); cytoplasm is cell minus nucleus.
    cells_suffix, nuclei_suffix
        Stem suffixes of the instance images of the last two encodings.
    part_values
        Pixel value of each part in the part map, in the order of the parts.
    snap_values
        Map undeclared values to the nearest declared one instead of failing.
    classes_csv
        CSV of ``image ID, class label`` (labels 1..C) giving every cell of an
        image a class; without it every cell is class 1.
    class_names
        Name of each cell class, class 1 first.
    targets
        ``"whole-cell"``: every cell; ``"largest"``: only the largest cell not
        touching the border (the largest cell when all touch it).
    min_area
        Cells of fewer pixels are ignored.
    percentiles
        Low and high percentile mapped to 0 and 1 for 16-bit and float images.
    skip_unpaired
        Skip (with a warning) images without a mask instead of failing.
    val_fraction, val_dir, split_seed
        Validation split: a seeded random fraction of the images, or all images
        of a separate folder.
    augment
        ``"none"``, ``"light"`` (flips and 90-degree turns), ``"adapt"`` (those,
        stain and brightness jitter and scale jitter: the adaptation recipe's)
        or ``"strong"`` augmentation of training images.
    channels
        Input channels of multi-channel images, in the order the network gets
        them (0-based: ``1,0`` puts channel 1 first). One channel is repeated to
        the three network channels, two get a zero third. None: the image's own
        channels (grayscale repeated, RGB as is, two channels with a zero third).
        Saved with the model and applied at prediction.
    projection
        ``"none"``: a Z-stack or time series is refused. ``"max"``: it becomes
        its maximum projection over planes and frames.
    crop
        Train on random square crops of this many pixels a side (images no
        larger are used whole); targets are rebuilt per crop, a cell cut by the
        crop edge keeps its visible part when that has at least ``min_area``
        pixels. Validation then predicts tiled, as prediction does. None: whole images.
    """

    image_glob: str = "*"
    mask_glob: str = "*"
    mask_suffix: str = "_masks"
    encoding: str = "parts"
    cells_suffix: str = "_cells"
    nuclei_suffix: str = "_nuclei"
    part_values: tuple[int, ...] = (0, 1, 2)
    snap_values: bool = False
    classes_csv: str | None = None
    class_names: tuple[str, ...] = ("cell",)
    targets: str = "whole-cell"
    min_area: int = 20
    percentiles: tuple[float, float] = (1.0, 99.8)
    skip_unpaired: bool = False
    val_fraction: float = 0.2
    val_dir: str | None = None
    split_seed: int = 0
    augment: str = "none"
    channels: tuple[int, ...] | None = None
    projection: str = "none"
    crop: int | None = None

    def __post_init__(self) -> None:
        if self.channels is not None:
            _check(isinstance(self.channels, Sequence) and not isinstance(self.channels, str),
                   f"channels must be a sequence of channel indices, got {self.channels!r}")
            object.__setattr__(self, "channels", tuple(self.channels))
            _check(1 <= len(self.channels) <= 3 and len(set(self.channels)) == len(self.channels)
                   and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in self.channels),
                   f"channels must be one to three distinct channel indices counted from 0 (such as 1,0), "
                   f"got {self.channels}")
        _check(self.projection in PROJECTIONS,
               f"projection must be one of {', '.join(PROJECTIONS)}; got {self.projection!r}")
        if self.crop is not None:
            _check(isinstance(self.crop, int) and not isinstance(self.crop, bool) and self.crop >= 32,
                   f"crop must be a whole number of pixels, at least 32, got {self.crop!r}")
        for name in ("part_values", "class_names", "percentiles"):
            value = getattr(self, name)
            _check(isinstance(value, Sequence) and not isinstance(value, str),
                   f"{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("image_glob", "mask_glob"):
            _check(isinstance(getattr(self, name), str) and getattr(self, name),
                   f"{name} must be a non-empty pattern such as '*.tif'")
        _check(self.encoding in ENCODINGS, f"encoding must be one of {', '.join(ENCODINGS)}; got {self.encoding!r}")
        suffixes = [self.mask_suffix, self.cells_suffix, self.nuclei_suffix]
        _check(len(set(suffixes)) == 3 and all(suffixes),
               f"mask, cells and nuclei suffixes must be different and non-empty, got {suffixes}")
        values = self.part_values
        _check(len(values) >= 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values),
               f"part_values must be two or more non-negative integers (one per part), got {values}")
        _check(len(set(values)) == len(values), f"part_values must be distinct, got {values}")
        _check(len(self.class_names) >= 1 and len(set(self.class_names)) == len(self.class_names)
               and all(isinstance(n, str) and n for n in self.class_names),
               f"class_names must be distinct non-empty names, got {self.class_names}")
        _check(self.targets in TARGETS, f"targets must be one of {', '.join(TARGETS)}; got {self.targets!r}")
        _positive_int("min_area", self.min_area)
        lo_hi = self.percentiles
        _check(len(lo_hi) == 2 and all(isinstance(p, (int, float)) for p in lo_hi) and 0 <= lo_hi[0] < lo_hi[1] <= 100,
               f"percentiles must be two numbers 0 <= low < high <= 100, got {lo_hi}")
        _check(isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1,
               f"val_fraction must lie in [0, 1), got {self.val_fraction!r}")
        _check(isinstance(self.split_seed, int), f"split_seed must be an integer, got {self.split_seed!r}")
        _check(self.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}; got {self.augment!r}")


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
#: The adaptation recipe: what ``cellrcnn-finetune --from RUN`` sets unless told otherwise. A fixed number of
#: optimizer steps (not epochs: with a few images, epochs are a handful of steps each) along a cosine from lr
#: 0.01, a step every 2 images, flips, turns, stain and scale jitter, and the new images resized so their
#: cells reach the size the source model was trained at (``model.target_cell_size``, from the run).
#: docs/benchmarks.md has the measurements behind it.
ADAPT_RECIPE = {"train.steps": 150, "train.lr": 0.01, "train.lr_schedule": "cosine", "train.warmup_epochs": 0,
                "train.accumulate": 2, "data.augment": "adapt"}


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

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accumulate", "val_every", "max_nonfinite"):
            _positive_int(name, getattr(self, name))
        for name in ("steps", "lr_step", "best_smoothing"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
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
        _check(0.0 <= self.val_score_threshold < 1.0,
               f"val_score_threshold must lie in [0, 1), got {self.val_score_threshold}")


@dataclass(frozen=True)
class Config(_Section):
    """The whole configuration of a run; saved as ``config.json`` with every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(isinstance(self.model, ModelConfig), f"model must be a ModelConfig, got {type(self.model).__name__}")
        _check(isinstance(self.data, DataConfig), f"data must be a DataConfig, got {type(self.data).__name__}")
        _check(isinstance(self.train, TrainConfig), f"train must be a TrainConfig, got {type(self.train).__name__}")
        schedule = SCHEDULES["pretrained" if self.model.pretrained else "scratch"]
        auto = {name: value for name, value in schedule.items() if getattr(self.train, name) is None}
        if auto:  # resolved once, here: the saved config.json says what was used
            object.__setattr__(self, "train", dataclasses.replace(self.train, **auto))
        metrics = best_metrics(self.model.parts)
        _check(self.train.best_metric in metrics,
               f"best_metric {self.train.best_metric!r} is not measured for the parts {list(self.model.parts)}; "
               f"choose one of {', '.join(metrics)}")
        _check(len(self.data.part_values) == self.model.num_parts,
               f"part_values {list(self.data.part_values)} must give one value per part {list(self.model.parts)}")
        _check(len(self.data.class_names) == self.model.num_classes,
               f"class_names {list(self.data.class_names)} must name each of the model's "
               f"{self.model.num_classes} cell classes")
        _check(self.data.encoding != "cells+nuclei" or self.model.num_parts == 3,
               f"encoding 'cells+nuclei' gives three parts (background, cytoplasm, nucleus); "
               f"the model has {list(self.model.parts)}")

    def to_json(self, path: str | os.PathLike, command: Sequence[str] | None = None) -> None:
        """Write the config to ``path`` atomically (a partial file is never left behind).

        ``command``, the command line that started the run, is recorded beside the
        sections as ``"command"``; :meth:`from_json` ignores it.
        """
        path = Path(path)
        values = self.to_dict()
        if command is not None:
            values = {"command": shlex.join(command), **values}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(values, indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def from_saved(cls, values: Mapping[str, Any]) -> "Config":
        """The config of a checkpoint: as :meth:`from_dict`, with the model section read by
        :meth:`ModelConfig.from_saved` so the model is rebuilt as it was trained."""
        _check(isinstance(values, Mapping) and isinstance(values.get("model", {}), Mapping),
               "a checkpoint's config must be a mapping with a 'model' section")
        return cls.from_dict({**values, "model": ModelConfig.from_saved(values.get("model", {}))})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Config":
        """Read a config written by :meth:`to_json` (a run's ``config.json`` works as is)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read config {path}: {err}") from err
        _check(isinstance(values, dict), f"{path} does not hold a config object")
        values.pop("command", None)
        try:
            return cls.from_dict(values)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """A copy with fields replaced, validated as on construction.

        Parameters
        ----------
        overrides : mapping
            ``"section.field"`` (``"train.lr"``) to a value; a string is parsed as
            the field's type (:func:`parse_field_value`), so command-line text
            can be passed as is.

        Raises
        ------
        ValueError
            An unknown section or field, a value of the wrong type, or a value the
            section rejects; the message names the field.
        """
        return dataclasses.replace(self, **_sections(overrides, lambda name, fields: dataclasses.replace(
            getattr(self, name), **fields)))

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> "Config":
        """The defaults with ``overrides`` (as in :meth:`with_overrides`). Unlike
        ``Config().with_overrides(...)``, settings that follow the weights (the lr
        schedule) follow the weights given here."""
        return cls(**_sections(overrides, lambda name, fields: _SECTIONS[name](**fields)))


def _sections(overrides: Mapping[str, Any], make) -> dict[str, Any]:
    """Each overridden section built by ``make(section, fields)``; its errors name the fields."""
    sections = {}
    for section, fields in _typed_overrides(overrides).items():
        try:
            sections[section] = make(section, fields)
        except ValueError as err:
            raise ValueError(f"{', '.join(f'{section}.{n}' for n in fields)}: {err}") from None
    return sections


def _typed_overrides(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"train.lr": "0.002"}`` as ``{"train": {"lr": 0.002}}``, each string parsed as its field's type."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        cls = _SECTIONS.get(section)
        _check(cls is not None and bool(name),
               f"{key!r}: expected section.field with section one of {', '.join(_SECTIONS)}")
        hints = _field_types(cls)
        _check(name in hints, f"{key!r}: {cls.__name__} has no field {name!r}; its fields are {', '.join(hints)}")
        if isinstance(value, str):
            value = parse_field_value(hints[name], value, key)
        changes.setdefault(section, {})[name] = value
    return changes


def _field_types(cls: type) -> dict[str, Any]:
    """The resolved type hint of each field of a config section."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def parse_field_value(hint: Any, text: str, name: str = "") -> Any:
    """Command-line text as a value of the type ``hint`` of a config field.

    Numbers, ``true``/``false`` and ``none``/``null`` are read as such where the
    type allows them; tuples take comma-separated items (``0,128,255``) and
    dicts ``key=value`` pairs (``cytoplasm=2,nucleus=1``); JSON lists and
    objects work for both. A string field takes the text as it is.

    Raises
    ------
    ValueError
        The text is not of that type; the message names ``name`` (when given) and the type.
    """
    prefix = f"{name}: " if name else ""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) < len(args) and text.strip().lower() in ("none", "null"):
            return None
        errors = []
        for option in options:
            try:
                return parse_field_value(option, text, name)
            except ValueError as err:
                errors.append(err)
        raise ValueError(f"{prefix}expected {' or '.join(map(_describe, options))} or none, got {text!r}")
    if hint is str:
        return text
    if hint is bool:
        word = text.strip().lower()
        if word in ("true", "yes", "1", "on"):
            return True
        if word in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{prefix}expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{prefix}expected an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{prefix}expected a number, got {text!r}") from None
    if origin is tuple:
        items = _json_or(text, list) or [t.strip() for t in text.split(",") if t.strip()]
        kinds = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(items):
            raise ValueError(f"{prefix}expected {len(kinds)} comma-separated values, got {text!r}")
        try:
            return tuple(parse_field_value(kind, str(item)) for kind, item in zip(kinds, items))
        except ValueError:
            plural = {int: "integers", float: "numbers"}.get(kinds[0], "values") if kinds else "values"
            raise ValueError(f"{prefix}expected comma-separated {plural}, got {text!r}") from None
    if origin is dict:
        pairs = _json_or(text, dict)
        if pairs is None:
            try:
                pairs = dict(item.split("=", 1) for item in text.split(",") if item.strip())
            except ValueError:
                raise ValueError(f"{prefix}expected key=value pairs such as cytoplasm=2,nucleus=1, "
                                 f"got {text!r}") from None
        return {str(k).strip(): parse_field_value(args[1], str(v), name) for k, v in pairs.items()}
    raise ValueError(f"{prefix}cannot read a value of type {_describe(hint)} from text")


def _json_or(text: str, kind: type):
    """``text`` as JSON when it is a JSON value of ``kind``, else None."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, kind) else None


_SECTIONS: dict[str, type[_Section]] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


#: A setting as library messages name it: a config field (``data.projection``) or an argument
#: (``cell_diameter``), with an optional value (``='max'``, ``=True``); not the setting a message is about
#: (``train.epochs: expected an integer``).
_SETTING = re.compile(r"\b(?>((?:model|data|train)\.[a-z_]+|[a-z]+(?:_[a-z]+)*)(?:=('[^']*'|[\w.,-]+))?)(?(2)|(?!:))")


def rename_settings(message: str, rename: Callable[[str, str | None], str | None]) -> str:
    """``message`` with each setting it names put in a front end's terms.

    Library messages name config fields (``data.snap_values=True``) and
    arguments (``cell_diameter='auto'``), so that they hold in a notebook; the
    command line and napari call this to say it in flags or widget labels.

    Parameters
    ----------
    message : str
        One message.
    rename : callable
        ``rename(name, value)`` gives the text for a setting (``value``: the
        text after ``=``, unquoted, or None), or None to leave it as it is. A
        bare word (no ``section.`` and no value) is never taken for a setting.
    """
    def replace(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if "." not in name and value is None:
            return match.group(0)
        told = rename(name, value.strip("'") if value is not None else None)
        return match.group(0) if told is None else told

    return _SETTING.sub(replace, message)
