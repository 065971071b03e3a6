"""Augmentation of an image and its label maps together (albumentations).

Label maps go through the same geometric transforms with nearest-neighbour
interpolation and zero (background) fill, before targets are built from them, so
boxes always fit the augmented cells.
"""

from __future__ import annotations

import albumentations as A
import numpy as np

__all__ = ["build_augmentation", "apply_augmentation"]


def _light() -> list:
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]


_NEAREST = {"mask_interpolation": 0, "border_mode": 0, "fill": 0, "fill_mask": 0}


def _adapt() -> list:
    # Another microscope differs first in stain and brightness, then in magnification: jitter those, mildly
    # (cells after scale matching are already about the size the model knows; the lower bound stays near 1
    # so little border is filled).
    return _light() + [
        A.Affine(scale=(0.9, 1.2), keep_ratio=True, p=0.5, **_NEAREST),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=25, val_shift_limit=0, p=0.5),
    ]


def _strong() -> list:
    nearest = _NEAREST
    return _light() + [
        A.Affine(scale=(0.8, 1.25), rotate=(-45, 45), p=0.7, **nearest),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=0, p=0.5),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.01, 0.05))], p=0.4),
        A.ElasticTransform(alpha=20, sigma=5, p=0.2, **nearest),
    ]


def build_augmentation(spec: str | A.BaseCompose) -> A.BaseCompose | None:
    """The augmentation pipeline for a preset name or a user's own ``Compose``.

    Parameters
    ----------
    spec : str or albumentations.BaseCompose
        ``"none"`` (no augmentation: returns None), ``"light"`` (flips and
        90-degree rotations), ``"adapt"`` (those, mild scale jitter of 0.9-1.2x,
        brightness, contrast, hue and saturation jitter: the adaptation
        recipe's), ``"strong"`` (adds scale and rotation, brightness and
        contrast, hue and saturation, blur or noise, elastic deformation), or a
        ``Compose`` of your own, used as given.
    """
    if isinstance(spec, A.BaseCompose):
        return spec
    presets = {"none": None, "light": _light, "adapt": _adapt, "strong": _strong}
    if spec not in presets:
        raise ValueError(f"augmentation must be one of {', '.join(presets)} or an albumentations Compose, got {spec!r}")
    return None if presets[spec] is None else A.Compose(presets[spec]())


def apply_augmentation(pipeline: A.BaseCompose | None, image: np.ndarray,
                       label_maps: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Apply ``pipeline`` to a float32 ``[H, W, 3]`` image in [0, 1] and its integer label maps.

    Returns the augmented image (clipped to [0, 1]) and label maps of the input dtypes.
    """
    if pipeline is None:
        return image, label_maps
    # float32 keeps instance ids exact (to 2**24) and is an OpenCV type for every transform.
    out = pipeline(image=image, masks=[m.astype(np.float32) for m in label_maps])
    maps = [np.rint(m).astype(src.dtype) for m, src in zip(out["masks"], label_maps)]
    return np.clip(out["image"], 0.0, 1.0).astype(np.float32), maps
