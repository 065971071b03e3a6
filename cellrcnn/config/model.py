"""The model section: backbone, input size, anchors, heads and the part loss."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .fields import (_LEGACY_MODEL_FIELDS, BACKBONES, COCO_BACKBONES, MASK_ALIGNMENTS, MASK_SIZES, NORMS,
                     PREDICTOR_INITS, WEIGHT_CHOICES, _check, _positive_int, _Section)

__all__ = ["ModelConfig"]


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
        ``"auto"``: training measures how often each part occurs inside the
        cells' boxes and gives a rare part ``median / its frequency``, between
        1 and 10 (``cellrcnn.modeling.losses.balanced_part_weights``); the run's
        config records the weights measured. Until then every part weighs 1.
    dice_weight
        Weight of a soft Dice term per foreground part added to the part
        cross-entropy (nnU-Net's loss): every part counts alike in it, however
        few its pixels, so a small nucleus is not ignored. 0: cross-entropy only.
    part_rois_per_image
        At most this many positive proposals per image (a random draw) train
        the part head; None: all of them (up to a quarter of
        ``box_batch_size_per_image``). The part loss is a mean over RoIs, so a
        draw estimates it without bias, at a fraction of the cost of a head that
        works at ``2 * mask_size`` on images with many cells.
    part_box_scale
        At inference the part head reads each detection's box grown by this
        factor about its centre (clipped to the image), so a cell's mask can
        reach past a box that is too tight (training reads its proposals, of
        every size around a cell's, as they are). Adapted to a new microscope,
        the boxes fall short of the cells by up to 30 px a side, and 1.15 raised
        the cytoplasm Dice by 0.02-0.03 (docs/benchmarks.md); the adaptation
        recipe sets it. 1: the box as detected (torchvision).
    part_head
        Which part head predicts each cell's part logits: a name registered in
        ``cellrcnn.modeling.part_heads`` (``"fcn"``: torchvision's mask head;
        ``"refine"``: the same, refined at twice the resolution from the finest
        features). A lab's own head is one registered module.
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
    edge_weight
        Extra weight of the mask pixels on a cell's outer edge in the part loss
        (a pixel weighs ``1 + edge_weight`` where the projected cell and its
        outside meet within its 3x3 neighbourhood): the cytoplasm's edge is
        where most of its error lies. 0: every pixel weighs the same.
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
    pixel_size
        Measured by training, not set by hand: the median micrometres per pixel
        of the training images, from their files (or ``data.pixel_size``). A
        calibrated image is then resized by the ratio of its pixel size to this
        one at prediction, whatever microscope took it. None: not known.
    cell_diameter_um
        Measured by training, not set by hand: the median cell diameter (square
        root of the box area) of the training images in micrometres, where their
        pixel size is known. None: not known.
    target_cell_size
        Set ``min_size`` and ``max_size`` from the training images so that their
        median cell spans this many network pixels (the adaptation recipe sets
        it to the cell size of the model it adapts, so cells of a new microscope
        reach the size that model was trained on). None: as given.
    """

    parts: tuple[str, ...] = ("background", "cytoplasm", "nucleus")
    part_weights: dict[str, float] | str = field(default_factory=dict)
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
    edge_weight: float = 0.0
    dice_weight: float = 0.0
    part_head: str = "fcn"
    part_rois_per_image: int | None = None
    part_box_scale: float = 1.0
    mask_alignment: str = "exact"
    norm: str = "auto"
    predictor_init: str = "chance"
    input_scale: float | None = None
    cell_size: float | None = None
    single_cell: bool | None = None
    pixel_size: float | None = None
    cell_diameter_um: float | None = None
    target_cell_size: float | None = None

    def __post_init__(self) -> None:
        # Accept lists (from JSON or a notebook) but store tuples: the config is frozen.
        for name in ("parts", "image_mean", "image_std"):
            value = getattr(self, name)
            _check(isinstance(value, Sequence) and not isinstance(value, str),
                   f"{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.part_weights, str) and self.part_weights == "auto":
            self._validate()
            return
        _check(isinstance(self.part_weights, Mapping),
               f"part_weights must map part names to weights (key=value pairs, e.g. cytoplasm=2,nucleus=1) or be "
               f"'auto', got {self.part_weights!r}")
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
        unknown = sorted(set(self.weights_by_part) - set(parts))
        _check(not unknown, f"part_weights names unknown part(s) {unknown}; parts are {list(parts)}")
        for name, w in self.weights_by_part.items():
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
        _check(isinstance(self.edge_weight, (int, float)) and not isinstance(self.edge_weight, bool)
               and math.isfinite(self.edge_weight) and self.edge_weight >= 0,
               f"edge_weight must be a number >= 0, got {self.edge_weight!r}")
        _check(isinstance(self.dice_weight, (int, float)) and not isinstance(self.dice_weight, bool)
               and math.isfinite(self.dice_weight) and self.dice_weight >= 0,
               f"dice_weight must be a number >= 0, got {self.dice_weight!r}")
        _check(self.part_rois_per_image is None or (type(self.part_rois_per_image) is int
                                                   and self.part_rois_per_image > 0),
               f"part_rois_per_image must be a positive integer or None, got {self.part_rois_per_image!r}")
        _check(isinstance(self.part_box_scale, (int, float)) and not isinstance(self.part_box_scale, bool)
               and math.isfinite(self.part_box_scale) and 1.0 <= self.part_box_scale <= 2.0,
               f"part_box_scale must be a number from 1 to 2, got {self.part_box_scale!r}")
        _check(isinstance(self.part_head, str) and self.part_head.isidentifier(),
               f"part_head must be the name of a registered part head (e.g. 'fcn'), got {self.part_head!r}")
        _check(type(self.mask_size) is int and self.mask_size in MASK_SIZES,
               f"mask_size must be one of {', '.join(map(str, MASK_SIZES))}; got {self.mask_size!r}")
        _check(self.mask_alignment in MASK_ALIGNMENTS,
               f"mask_alignment must be one of {', '.join(MASK_ALIGNMENTS)}; got {self.mask_alignment!r}")
        _check(self.predictor_init in PREDICTOR_INITS,
               f"predictor_init must be one of {', '.join(PREDICTOR_INITS)}; got {self.predictor_init!r}")
        _check(self.norm in NORMS, f"norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        for name in ("input_scale", "cell_size", "target_cell_size", "pixel_size", "cell_diameter_um"):
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
    def weights_by_part(self) -> dict[str, float]:
        """``part_weights`` as given, ``{}`` while ``"auto"`` is not yet measured."""
        return {} if isinstance(self.part_weights, str) else self.part_weights

    @property
    def part_weight_vector(self) -> tuple[float, ...]:
        """Loss weight of each part, in the order of :attr:`parts` (1 for each while ``"auto"`` is unmeasured)."""
        return tuple(self.weights_by_part.get(p, 1.0) for p in self.parts)

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
