"""The scale an image is predicted at: from the model, a cell diameter, or estimated."""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import pandas as pd

from ..config.model import ModelConfig

__all__ = ["prediction_scale", "scale_from_diameters", "scale_from_ladder", "warn_off_size", "SCALE_LADDER"]

logger = logging.getLogger(__name__)


#: Scales tried by :func:`scale_from_ladder`, as factors of the training scale: 0.35x to 2.8x.
SCALE_LADDER = tuple(2 ** (k / 2) for k in range(-3, 4))

#: A median detected cell this many times larger or smaller than the trained cell size gets a warning.
SIZE_WARNING = 1.5


def scale_from_diameters(diameters: np.ndarray, cell_size: float) -> float | None:
    """The resize factor that brings the median of ``diameters`` (cell diameters in image pixels, float
    ``[N]``) to ``cell_size`` network pixels; None without any."""
    diameters = np.asarray(diameters, dtype=float)
    diameters = diameters[np.isfinite(diameters) & (diameters > 0)]
    return float(cell_size / np.median(diameters)) if len(diameters) else None


def prediction_scale(model: ModelConfig, scale: float | None = None, cell_diameter: float | None = None) -> float | None:
    """The factor by which images are resized for the network at prediction.

    Parameters
    ----------
    model : ModelConfig
        The model's config, with the scale it was trained at (``input_scale``, ``cell_size``).
    scale : float, optional
        Resize factor given by the user (image pixels to network pixels).
    cell_diameter : float, optional
        Typical cell diameter in the new images, in pixels: the factor makes
        cells as wide as the model saw them in training (``cell_size``).

    Returns
    -------
    float or None
        ``scale``; else ``cell_size / cell_diameter``; else the training
        scale; None (each image resized to ``min_size``) for models that did
        not record it.

    Raises
    ------
    ValueError
        Both given, a value not positive, or a cell diameter for a model without a recorded cell size.
    """
    if scale is not None and cell_diameter is not None:
        raise ValueError("give the scale or the cell diameter, not both")
    for label, value in (("scale", scale), ("cell diameter", cell_diameter)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"the {label} must be a positive number, got {value}")
    if scale is not None:
        return float(scale)
    if cell_diameter is not None:
        if model.cell_size is None:
            raise ValueError("this model does not record the cell size it was trained at (trained before it was "
                             "recorded); give the resize factor instead (scale=FACTOR)")
        return model.cell_size / cell_diameter
    return model.input_scale


def scale_from_ladder(detect: Callable[[float], dict[str, np.ndarray]], base: float, cell_size: float,
                      name: str = "image") -> float:
    """The resize factor at which the cells of one image look the size the model was trained on.

    The model runs at each scale of :data:`SCALE_LADDER` (factors of the training scale). Each run's
    detections imply a scale: the one that brings their median diameter to the trained cell size. The
    scale kept is that of the run whose best detection scores highest (at a wrong scale cells look unlike
    any the model saw, and so score lower), refined once by a last run at the scale its detections imply.

    Parameters
    ----------
    detect : callable
        ``detect(scale)``: the detections at that scale, ``{"scores": float [N], "diameters": float [N]}``
        (diameters in image pixels).
    base : float
        The training scale (``model.input_scale``).
    cell_size : float
        The trained cell size in network pixels (``model.cell_size``).
    name : str
        The image's name, for the log.

    Returns
    -------
    float
        The scale; ``base`` when no scale finds a cell.
    """
    found = []
    for factor in SCALE_LADDER:
        scale = base * factor
        detections = detect(scale)
        if len(detections["scores"]):
            found.append((float(detections["scores"].max()), scale, detections))
    if not found:
        logger.warning("%s: no cell found at any scale from %.2g to %.2g; predicting at the training scale",
                       name, base * SCALE_LADDER[0], base * SCALE_LADDER[-1])
        return base
    _, scale, detections = max(found, key=lambda f: (f[0], -abs(math.log(f[1] / base))))
    implied = scale_from_diameters(detections["diameters"], cell_size)
    refined = detect(implied)
    if len(refined["scores"]):
        implied = scale_from_diameters(refined["diameters"], cell_size)
    logger.debug("%s: estimated scale %.3g (training scale %.3g)", name, implied, base)
    return implied


def warn_off_size(name: str, table: pd.DataFrame, scale: float | None, cell_size: float | None) -> bool:
    """Warn when the cells of a prediction's ``table`` are much larger or smaller than those the model
    was trained on (``cell_size`` network pixels): the scale is then likely wrong (another microscope),
    and so are many of the cells. Returns whether it warned."""
    if cell_size is None or scale is None or table.empty:
        return False
    # measured as training measures cell_size: the square root of the box area, in network pixels
    sides = np.sqrt((table["bbox_x1"] - table["bbox_x0"]) * (table["bbox_y1"] - table["bbox_y0"]))
    found = float(np.median(sides)) * scale
    if 1 / SIZE_WARNING <= found / cell_size <= SIZE_WARNING:
        return False
    logger.warning("%s: the cells found span about %.0f network pixels, %.1fx the %.0f the model was "
                   "trained on: these images may have another magnification. Give the cell diameter "
                   "(cell_diameter='auto', or cell_diameter=PIXELS) to resize them",
                   name, found, found / cell_size, cell_size)
    return True
