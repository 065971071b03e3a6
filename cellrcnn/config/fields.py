"""The choices each setting takes, and the checks and parsing shared by the sections."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Mapping

__all__ = ["BACKBONES", "WEIGHT_CHOICES", "MASK_SIZES", "MASK_ALIGNMENTS", "NORMS", "PREDICTOR_INITS", "ENCODINGS",
           "TARGETS", "AUGMENTATIONS", "SINGLE_RULES", "LR_SCHEDULES", "PROJECTIONS", "parse_field_value"]


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
ENCODINGS = ("parts", "cells+parts", "cells+nuclei", "coco", "geojson")
#: Which cells of an image become targets.
TARGETS = ("whole-cell", "largest")
#: Augmentation presets ("adapt": the adaptation recipe's flips, turns, stain and scale jitter).
AUGMENTATIONS = ("none", "light", "adapt", "strong")
#: How the single-cell choice picks its cell (cellrcnn.inference.selection).
SINGLE_RULES = ("largest", "nucleated", "score")
#: How the lr falls: by ``lr_gamma`` every ``lr_step`` epochs, or along a half cosine over the optimizer steps.
LR_SCHEDULES = ("step", "cosine")
#: What becomes of a Z-stack or time series: refused, or its maximum projection.
PROJECTIONS = ("none", "max")
#: The most pixels (rows x columns x planes) of an image read whole, checked from its header (``data.max_pixels``):
#: 268 megapixels, a 16384 x 16384 field. Larger uncompressed TIFFs are read window by window.
MAX_PIXELS = 2**28

#: Pixel sizes outside this range (micrometres) are refused as absurd: 0.1 nm (beyond any electron
#: microscope's pixel) to 1 cm (beyond any slide scanner's).
MIN_PIXEL_UM, MAX_PIXEL_UM = 1e-4, 1e4
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
        kwargs, hints = {}, _field_types(cls)
        for name, value in values.items():
            sub = hints[name]
            if isinstance(sub, type) and issubclass(sub, _Section) and isinstance(value, Mapping):
                value = sub.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)


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
