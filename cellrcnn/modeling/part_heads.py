"""Part heads: from FPN features and boxes to each cell's part logits, chosen by ``model.part_head``.

A part head is the plug-in point of the mask branch. :class:`~cellrcnn.modeling.heads.PartRoIHeads`
gives it the FPN features and the boxes (proposals while training, detections at
inference) and takes back part logits; the loss, the paste and the predictor follow
the logits' resolution, so a new head touches nothing else. A lab's own head is one
module::

    from cellrcnn.modeling.part_heads import PartHead, register_part_head

    @register_part_head("mine")
    def build_mine(config, in_channels):
        return MyHead(...)  # a PartHead

and ``ModelConfig(part_head="mine")`` builds it, once the module that registers it is
imported. For the command line, a package declares that module as an entry point of
the group ``cellrcnn.part_heads`` (``mine = mylab.heads``): it is imported the first
time a part head is looked up.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, roi_align

from ..config.model import ModelConfig
from .backbone import _norm_layers
from .heads import IMAGE_KEY, AlignedMultiScaleRoIAlign

__all__ = ["PartHead", "FCNPartHead", "RefinedPartHead", "register_part_head", "build_part_head", "part_head_names",
           "check_part_head"]

#: Entry-point group of packages that register part heads.
ENTRY_POINTS = "cellrcnn.part_heads"

logger = logging.getLogger(__name__)

#: FPN levels the RoI poolers read (torchvision's).
LEVELS = ["0", "1", "2", "3"]

PartHeadBuilder = Callable[[ModelConfig, int], "PartHead"]
_REGISTRY: dict[str, PartHeadBuilder] = {}
_PLUGINS_LOADED: list[bool] = []


class PartHead(nn.Module):
    """What a part head does: ``forward(features, boxes, image_shapes) -> logits``.

    ``features`` is the FPN's ``dict`` of ``[B, C, H_l, W_l]`` maps, ``boxes`` a list
    of float ``[P_i, 4]`` xyxy boxes per image (network pixels) and ``image_shapes``
    the images' ``(H, W)``. The result is float ``[P, C * K, M, M]`` logits, the
    boxes of all images in order (``C = 1`` unless parts are class-specific),
    with ``M`` = :attr:`resolution`: the loss projects the targets to it and the
    paste samples it.
    """

    resolution: int
    #: True: ``features`` also hold the normalised input batch ``[B, 3, H, W]`` under ``"image"``
    #: (:data:`~cellrcnn.modeling.heads.IMAGE_KEY`), for heads that read pixels finer than the FPN's.
    reads_image: bool = False

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:  # pragma: no cover - the contract
        raise NotImplementedError


def register_part_head(name: str) -> Callable[[PartHeadBuilder], PartHeadBuilder]:
    """Register ``builder(config: ModelConfig, in_channels: int) -> PartHead`` as ``part_head=name``."""
    if not name.isidentifier():
        raise ValueError(f"a part head's name must be an identifier, got {name!r}")

    def register(builder: PartHeadBuilder) -> PartHeadBuilder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"a part head named {name!r} is already registered ({_REGISTRY[name].__module__})")
        _REGISTRY[name] = builder
        return builder

    return register


def _load_plugins() -> None:
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED.append(True)
    for point in entry_points(group=ENTRY_POINTS):
        try:
            point.load()  # the module registers its heads as it is imported
        except Exception as err:  # a broken plug-in must not stop the built-in heads
            logger.warning("part head plug-in %s (%s) could not be loaded: %s", point.name, point.value, err)


def part_head_names() -> tuple[str, ...]:
    """The names ``model.part_head`` may take (plug-ins' included)."""
    _load_plugins()
    return tuple(_REGISTRY)


def check_part_head(name: str) -> None:
    """Raise ValueError naming the registered part heads unless ``name`` is one."""
    if name not in part_head_names():
        raise ValueError(f"part_head {name!r} is not a registered part head; choose one of "
                         f"{', '.join(_REGISTRY)}, or register your own (docs/architecture.md, 'Part heads')")


def build_part_head(config: ModelConfig, in_channels: int) -> PartHead:
    """The part head that ``config.part_head`` names, for FPN features of ``in_channels`` channels."""
    check_part_head(config.part_head)
    head = _REGISTRY[config.part_head](config, in_channels)
    if not isinstance(head, PartHead):
        raise TypeError(f"part head {config.part_head!r} built a {type(head).__name__}, not a PartHead")
    return head


def _out_channels(config: ModelConfig) -> int:
    return config.num_parts * (config.num_classes if config.class_specific_parts else 1)


class FCNPartHead(PartHead):
    """torchvision's mask branch: RoIAlign at ``M/2`` from the FPN level of each box's size, four 3x3 convs,
    a 2x transposed conv and a 1x1 conv to the part logits at ``M``.

    Its modules keep torchvision's names (``mask_roi_pool``, ``mask_head``, ``mask_predictor``) so that COCO
    weights load into the convs.
    """

    def __init__(self, mask_roi_pool: nn.Module, mask_head: nn.Module, mask_predictor: nn.Module,
                 resolution: int) -> None:
        super().__init__()
        self.mask_roi_pool, self.mask_head, self.mask_predictor = mask_roi_pool, mask_head, mask_predictor
        self.resolution = resolution

    @classmethod
    def from_config(cls, config: ModelConfig, in_channels: int, **kwargs) -> "FCNPartHead":
        pool = AlignedMultiScaleRoIAlign if config.mask_alignment == "exact" else MultiScaleRoIAlign
        head = MaskRCNNHeads(in_channels, [256, 256, 256, 256], 1, norm_layer=_norm_layers(config)[1])
        predictor = MaskRCNNPredictor(in_channels, 256, _out_channels(config))  # pools at M/2, upsamples 2x
        return cls(pool(LEVELS, config.mask_size // 2, 2), head, predictor, config.mask_size, **kwargs)

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))


class RefinedPartHead(FCNPartHead):
    """:class:`FCNPartHead`'s logits refined at twice their resolution from finer features.

    The coarse logits (``M``) are upsampled to ``2M`` and a small decoder adds a
    correction read from the finest FPN level (stride 4) and from the image itself
    (stride 1, through two 3x3 convs of ``image_channels``), both sampled at ``2M``
    for every box, whatever its size: the FCN head pools a box's own level at
    ``M/2``, a few feature pixels per part edge. It is a dense variant of
    PointRend's point head (Kirillov et al. 2020, detectron2's
    ``projects/PointRend``): coarse logits and fine features, every pixel instead of
    the uncertain ones. The correction starts at zero, so a model adapted from an
    FCN run starts where that run ended.

    Parameters
    ----------
    feature_channels, out_channels : int
        Channels of the FPN features and of the logits.
    aligned : bool
        Pixel-exact RoIAlign for the fine features (``mask_alignment="exact"``).
    channels : int
        Width of the decoder.
    image_channels : int
        Width of the convs that read the image crop; 0: the FPN level alone.
    fine_level : str
        FPN level read for the fine features.
    """

    def __init__(self, mask_roi_pool: nn.Module, mask_head: nn.Module, mask_predictor: nn.Module,
                 resolution: int, *, feature_channels: int, out_channels: int, aligned: bool = True,
                 channels: int = 64, fine_level: str = "0", image_channels: int = 16) -> None:
        super().__init__(mask_roi_pool, mask_head, mask_predictor, resolution)
        pool = AlignedMultiScaleRoIAlign if aligned else MultiScaleRoIAlign
        self.aligned = aligned
        self.coarse_resolution = resolution
        self.resolution = 2 * resolution
        self.fine_pool = pool([fine_level], self.resolution, 2)
        self.reduce = nn.Conv2d(feature_channels, channels, 1)
        self.reads_image = image_channels > 0
        if self.reads_image:
            self.image_convs = nn.Sequential(
                nn.Conv2d(3, image_channels, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(image_channels, image_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.refine = nn.Sequential(
            nn.Conv2d(channels + image_channels + out_channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, out_channels, 1))
        for layer in self.refine:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.refine[-1].weight)  # starts as the upsampled coarse logits

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        coarse = super().forward(features, boxes, image_shapes)
        up = F.interpolate(coarse, size=(self.resolution,) * 2, mode="bilinear", align_corners=False)
        if coarse.shape[0] == 0:
            return up
        fine = [F.relu(self.reduce(self.fine_pool(features, boxes, image_shapes)))]
        if self.reads_image:
            crops = roi_align(features[IMAGE_KEY], [b.to(features[IMAGE_KEY].dtype) for b in boxes],
                              (self.resolution,) * 2, 1.0, 2, aligned=self.aligned)
            fine.append(self.image_convs(crops.to(fine[0].dtype)))
        return up + self.refine(torch.cat([*fine, up.to(fine[0].dtype)], dim=1))


@register_part_head("fcn")
def build_fcn(config: ModelConfig, in_channels: int) -> PartHead:
    """torchvision's mask head (:class:`FCNPartHead`)."""
    return FCNPartHead.from_config(config, in_channels)


@register_part_head("refine")
def build_refine(config: ModelConfig, in_channels: int) -> PartHead:
    """:class:`RefinedPartHead`: part logits at ``2 * mask_size``."""
    return RefinedPartHead.from_config(config, in_channels, feature_channels=in_channels,
                                       out_channels=_out_channels(config),
                                       aligned=config.mask_alignment == "exact")
