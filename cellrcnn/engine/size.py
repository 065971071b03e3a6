"""Fitting the size model (:mod:`cellrcnn.modeling.size_model`) to a trained model and its training images."""

from __future__ import annotations

import logging
import math

import numpy as np
from torch import nn

from ..config.data import DataConfig
from ..config.model import ModelConfig
from ..data.dataset import cell_sizes
from ..io.intensity import read_image
from ..modeling.size_model import fit_ridge, window_style

__all__ = ["fit_size_model", "SIZE_FACTORS", "MIN_SIZE_IMAGES", "MAX_SIZE_IMAGES"]

logger = logging.getLogger(__name__)

#: Each training image is seen at this many random magnifications, 2^-1.5 to 2^1.5 (0.35x to 2.8x, the ladder's).
SIZE_FACTORS = 3
#: Fewer training images with cells than this teach a regression from a 1280-number style nothing: the size
#: model is left unfitted, and ``cell_diameter="auto"`` tries its ladder of scales.
MIN_SIZE_IMAGES = 8
#: At most this many training images (evenly spread) are read for the fit.
MAX_SIZE_IMAGES = 300


def fit_size_model(model: nn.Module, pairs: list, data: DataConfig, config: ModelConfig, seed: int = 0) -> int:
    """Fit ``model.size_model`` on the training ``pairs`` and load it into the model, in place.

    Each image is read as training reads it and seen at :data:`SIZE_FACTORS` random magnifications ``f``:
    its style at ``input_scale * f``, and the log of its median annotated cell diameter there, in network
    pixels, are one example of :func:`~cellrcnn.modeling.size_model.fit_ridge`.

    Returns
    -------
    int
        The number of examples fitted (0: fewer than :data:`MIN_SIZE_IMAGES` images with cells, or a model
        without a recorded scale; the model is left unfitted).
    """
    if config.input_scale is None or len(pairs) < MIN_SIZE_IMAGES or getattr(model, "size_model", None) is None:
        return 0
    # cell_sizes reads at most MAX_SIZE_IMAGES pairs, evenly spread: those with cells are the fit's images
    sides = cell_sizes(pairs, data, count=MAX_SIZE_IMAGES).groupby("image")["cell_side"].median()
    if len(sides) < MIN_SIZE_IMAGES:
        return 0
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    styles, targets = [], []
    try:
        for pair in pairs:
            if pair.image.name not in sides.index:  # not read, or no cell in it: no size to learn
                continue
            image = read_image(pair.image, data)
            for factor in 2.0 ** rng.uniform(-1.5, 1.5, SIZE_FACTORS):
                scale = config.input_scale * factor
                styles.append(window_style(model, image, scale, device).numpy())
                targets.append(math.log(sides[pair.image.name] * scale))
    finally:
        model.train(was_training)
    if len(styles) < 2:
        return 0
    model.size_model.load_fit(fit_ridge(np.stack(styles), np.array(targets)))
    return len(styles)
