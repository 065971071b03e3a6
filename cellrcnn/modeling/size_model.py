"""A size model in the manner of Cellpose's: the cell size of an image regressed from its "style".

The style of an image is the network's FPN features at the training scale, averaged over space, one vector
per image. At the end of training a ridge regression is fitted from the style of each training image, resized
by a few random factors, to the log of its median cell diameter in network pixels (:func:`fit_ridge`). At
prediction, ``cell_diameter="auto"`` reads the diameter the regression gives for a new image and resizes the
image so that its cells span the trained cell size. The fitted regression lives in the model's state
(:class:`SizeModel`'s buffers), so checkpoints and packages carry it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["SizeModel", "STYLE_LEVELS", "STYLE_WINDOW", "RIDGE", "fit_ridge", "image_style", "window_style"]

#: The FPN outputs averaged into the style (every level and the pooled one, as torchvision's FPN names them).
STYLE_LEVELS = ("0", "1", "2", "3", "pool")

#: The style is read from the central window of at most this many network pixels a side.
STYLE_WINDOW = 512

#: Ridge penalty on the standardised style: chosen on ``wbc_cellavision_few`` (docs/benchmarks.md, issue 39).
RIDGE = 1000.0


def fit_ridge(styles: np.ndarray, log_sizes: np.ndarray, penalty: float = RIDGE) -> dict[str, np.ndarray]:
    """Ridge regression of ``log_sizes`` (float ``[N]``) on ``styles`` (float ``[N, D]``), each feature
    standardised first.

    Returns
    -------
    dict
        ``mean``, ``std``, ``coef`` (float ``[D]``) and ``intercept`` (float): a style ``s`` gives
        ``((s - mean) / std) @ coef + intercept``.
    """
    styles, log_sizes = np.asarray(styles, np.float64), np.asarray(log_sizes, np.float64)
    if styles.ndim != 2 or len(styles) != len(log_sizes) or len(styles) < 2:
        raise ValueError(f"need two or more styles [N, D] with one size each, got {styles.shape} and "
                         f"{log_sizes.shape}")
    mean, std = styles.mean(0), styles.std(0) + 1e-6
    z = (styles - mean) / std
    centred = log_sizes - log_sizes.mean()
    coef = np.linalg.solve(z.T @ z + penalty * np.eye(z.shape[1]), z.T @ centred)
    return {"mean": mean, "std": std, "coef": coef, "intercept": np.float64(log_sizes.mean())}


@torch.no_grad()
def image_style(model: nn.Module, image: Tensor, scale: float) -> Tensor:
    """The style of one image: its FPN features at ``scale`` averaged over space, level after level.

    Parameters
    ----------
    model : nn.Module
        A model from :func:`~cellrcnn.modeling.build.build_model`, in eval mode.
    image : Tensor
        float ``[3, H, W]``, values 0..1.
    scale : float
        The resize factor from image to network pixels (the training scale).

    Returns
    -------
    Tensor
        float ``[len(STYLE_LEVELS) * C]`` on the CPU.
    """
    model = getattr(model, "module", model)
    batch, _ = model.transform([image], scale=scale)
    features = model.backbone(batch.tensors)
    if not isinstance(features, (dict, OrderedDict)) or not all(k in features for k in STYLE_LEVELS):
        raise ValueError("the size model needs a backbone with FPN outputs " + ", ".join(STYLE_LEVELS))
    return torch.cat([features[k].float().mean(dim=(-2, -1))[0] for k in STYLE_LEVELS]).cpu()


def window_style(model: nn.Module, image: np.ndarray, scale: float, device: torch.device | str = "cpu") -> Tensor:
    """The style of the central window of ``image`` (float ``[H, W, 3]`` in [0, 1], or anything with the
    :class:`~cellrcnn.io.ImageField` ``read`` and ``shape``) spanning :data:`STYLE_WINDOW` network pixels at
    ``scale``: the same window in training and in prediction, whatever the image's size."""
    side = max(8, math.ceil(STYLE_WINDOW / scale))
    H, W = image.shape[:2]
    y0, x0 = max(0, (H - side) // 2), max(0, (W - side) // 2)
    y1, x1 = min(H, y0 + side), min(W, x0 + side)
    window = image.read(y0, y1, x0, x1) if hasattr(image, "read") else image[y0:y1, x0:x1]
    tensor = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)).permute(2, 0, 1).to(device)
    return image_style(model, tensor, scale)


class SizeModel(nn.Module):
    """The fitted regression, as buffers of the model (saved with it); unfitted until :meth:`load_fit`.

    Parameters
    ----------
    dim : int
        Length of a style (``len(STYLE_LEVELS)`` x the FPN's channels).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        for name in ("mean", "coef"):
            self.register_buffer(name, torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("intercept", torch.zeros(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # checkpoints saved before the size model load unfitted (their auto scale keeps the ladder)
        self._register_load_state_dict_pre_hook(self._fill_missing)

    def _fill_missing(self, state_dict, prefix, *args) -> None:
        for name, buffer in self.named_buffers(recurse=False):
            state_dict.setdefault(prefix + name, buffer.detach().clone())

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def load_fit(self, fit: dict[str, np.ndarray]) -> None:
        """Take a :func:`fit_ridge` result."""
        for name in ("mean", "std", "coef"):
            getattr(self, name).copy_(torch.as_tensor(fit[name], dtype=torch.float32))
        self.intercept.fill_(float(fit["intercept"]))
        self.fitted.fill_(True)

    def forward(self, style: Tensor) -> Tensor:
        """The log cell diameter (network pixels at the style's scale) of each style ``[..., D]``."""
        return ((style.to(self.mean) - self.mean) / self.std) @ self.coef + self.intercept

    def diameter(self, style: Tensor) -> float:
        """The cell diameter in network pixels that one style gives."""
        return float(math.exp(float(self(style))))
