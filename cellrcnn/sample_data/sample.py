"""The small synthetic bright-field images of the bundled sample, the demo and the tests."""

from __future__ import annotations

import numpy as np
from skimage.draw import disk, ellipse
from skimage.filters import gaussian

__all__ = ["synthetic_sample"]


_BACKGROUND = np.array([0.90, 0.86, 0.89])
_RED_CELL = np.array([0.85, 0.55, 0.58])
_CYTOPLASM = np.array([0.78, 0.70, 0.84])
_NUCLEUS = np.array([0.38, 0.22, 0.55])


def synthetic_sample(seed: int, size: tuple[int, int] = (128, 128), max_cells: int = 3) -> dict[str, np.ndarray]:
    """One synthetic image and its part-label map, fully determined by ``seed``.

    Parameters
    ----------
    seed : int
        Seed of the random generator.
    size : tuple of int
        ``(H, W)`` of the image.
    max_cells : int
        At most this many cells (at least one); some may touch the border.

    Returns
    -------
    dict
        ``image`` uint8 ``[H, W, 3]`` RGB and ``parts`` uint8 ``[H, W]`` with
        0 background, 1 cytoplasm, 2 nucleus.
    """
    rng = np.random.default_rng(seed)
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    light = 1.0 + 0.06 * (yy * rng.uniform(-1, 1) + xx * rng.uniform(-1, 1))
    image = np.broadcast_to(_BACKGROUND, (H, W, 3)) * light[..., None]
    parts = np.zeros((H, W), dtype=np.uint8)

    for _ in range(rng.integers(4, 12)):  # red cells as debris, drawn first so cells cover them
        r, c, rad = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(7, 11)
        rr, cc = disk((r, c), rad, shape=(H, W))
        image[rr, cc] = _RED_CELL
        rr, cc = disk((r, c), rad * 0.45, shape=(H, W))
        image[rr, cc] = 0.5 * (_RED_CELL + _BACKGROUND)

    centres: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, max_cells + 1))):
        for _attempt in range(50):
            radius = rng.uniform(0.14, 0.22) * min(H, W)
            r, c = rng.uniform(0.1 * H, 0.9 * H), rng.uniform(0.1 * W, 0.9 * W)
            if all(np.hypot(r - r2, c - c2) > radius + rad2 + 3 for r2, c2, rad2 in centres):
                break
        else:
            continue
        centres.append((r, c, radius))
        rr, cc = ellipse(r, c, radius, radius * rng.uniform(0.8, 1.0), shape=(H, W),
                         rotation=rng.uniform(0, np.pi))
        parts[rr, cc] = 1
        for _lobe in range(int(rng.integers(1, 4))):
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.3) * radius
            rr, cc = ellipse(r + dist * np.sin(angle), c + dist * np.cos(angle), radius * rng.uniform(0.3, 0.45),
                             radius * rng.uniform(0.2, 0.35), shape=(H, W), rotation=rng.uniform(0, np.pi))
            inside = parts[rr, cc] > 0
            parts[rr[inside], cc[inside]] = 2

    texture = gaussian(rng.normal(0, 1, (H, W)), sigma=1.5)
    texture = 1.0 + 0.08 * texture / (np.abs(texture).max() + 1e-9)
    for value, colour in ((1, _CYTOPLASM), (2, _NUCLEUS)):
        image = np.where((parts == value)[..., None], colour * texture[..., None], image)
    image = gaussian(image, sigma=0.8, channel_axis=-1) + rng.normal(0, 0.015, (H, W, 3))
    return {"image": (np.clip(image, 0, 1) * 255).round().astype(np.uint8), "parts": parts}
