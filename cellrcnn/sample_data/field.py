"""Synthetic fluorescence fields of view, with instance and part labels."""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np

__all__ = ["synthetic_field"]

logger = logging.getLogger(__name__)


#: Rows rendered at a time: the float temporaries grow with the field's width, not its area.
_BAND = 256
#: Random streams (with the seed and a row index they seed one generator per row, so a row's noise does not
#: depend on how the field is cut into bands).
_TEXTURE_STREAM, _NOISE_STREAMS = 1, (2, 3)
#: Smallest cell diameter that still gets a cytoplasm ring around a nucleus holding the cell's centre pixel.
_MIN_DIAMETER = 10.0
#: Cell diameters vary uniformly by this fraction around the mean.
_SIZE_SPREAD = 0.2
#: Cells that are not a touching pair keep at least this fraction of the mean diameter between their extents.
_GAP = 0.05


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    shape = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(shape) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 16
                                  for v in shape):
        raise ValueError(f"size must be an int or (H, W) of ints of at least 16 pixels, got {size!r}")
    return int(shape[0]), int(shape[1])


def _shape_params(rng: np.random.Generator, radius: np.ndarray, centred_nucleus: bool = False) -> dict[str, np.ndarray]:
    """Random outline and nucleus of cells of mean radii ``radius`` (float64 ``[n]``), relative to their centres.

    The outline is an ellipse of the same area as the disk of ``radius`` (aspect up to 1.3) with a small
    3- and 4-fold wobble; the nucleus an ellipse of 0.40-0.55 radii, offset by at most 0.1 radius, which
    keeps it inside the outline with a cytoplasm ring around it.
    """
    n = len(radius)
    aspect = np.sqrt(rng.uniform(1.0, 1.3, n))
    wobble = rng.uniform(0.0, 0.04, (2, n))
    nucleus = radius * rng.uniform(0.40, 0.55, n)
    nucleus_aspect = np.sqrt(rng.uniform(1.0, 1.3, n))
    offset, offset_angle = radius * rng.uniform(0.0, 0.1, n), rng.uniform(0, 2 * np.pi, n)
    if centred_nucleus:
        offset = np.zeros(n)
    return {
        "a": radius * aspect, "b": radius / aspect, "angle": rng.uniform(0, np.pi, n),
        "w3": wobble[0], "w4": wobble[1], "p3": rng.uniform(0, 2 * np.pi, n), "p4": rng.uniform(0, 2 * np.pi, n),
        "na": nucleus * nucleus_aspect, "nb": nucleus / nucleus_aspect, "nangle": rng.uniform(0, np.pi, n),
        "ny": offset * np.sin(offset_angle), "nx": offset * np.cos(offset_angle),
        # the farthest the outline reaches from the centre, plus a pixel for rasterisation
        "reach": radius * aspect * (1.0 + wobble.sum(axis=0)) + 1.0,
    }


def _candidate_units(rng: np.random.Generator, count: int, shape: tuple[int, int], diameter: float,
                     pair_probability: float) -> dict[str, np.ndarray]:
    """``count`` random units, each a single cell or (with ``pair_probability``) two touching cells.

    Returns unit centres ``uy, ux`` and ``unit_reach`` (float64 ``[count]``), ``pair`` (bool ``[count]``) and the
    cells of each unit: ``cy, cx, radius`` and :func:`_shape_params` entries as float64 ``[count, 2]``
    (the second cell of a single is ignored).
    """
    H, W = shape
    uy, ux = rng.uniform(-0.5, H - 0.5, count), rng.uniform(-0.5, W - 0.5, count)
    pair = rng.random(count) < pair_probability
    radius = 0.5 * diameter * rng.uniform(1 - _SIZE_SPREAD, 1 + _SIZE_SPREAD, (count, 2))
    params = _shape_params(rng, radius.ravel())
    cells = {k: v.reshape(count, 2) for k, v in params.items()}
    # A touching pair (two daughter cells): centres closer than the sum of radii, so the outlines overlap and
    # the shared pixels go to the relatively nearer cell, leaving a straight-ish common border.
    direction = rng.uniform(0, 2 * np.pi, count)
    half = 0.5 * rng.uniform(0.8, 0.92, count) * radius.sum(axis=1) * pair
    dy, dx = half * np.sin(direction), half * np.cos(direction)
    cells["cy"] = np.stack([uy - dy, uy + dy], axis=1)
    cells["cx"] = np.stack([ux - dx, ux + dx], axis=1)
    cells["radius"] = radius
    reach = np.where(pair, half + cells["reach"].max(axis=1), cells["reach"][:, 0])
    return {**cells, "uy": uy, "ux": ux, "unit_reach": reach, "pair": pair}


def _place_cells(rng: np.random.Generator, shape: tuple[int, int], diameter: float, coverage: float,
                 touching: float, fixed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Random sequential placement of non-overlapping units around the ``fixed`` cells until the cells cover
    about ``coverage`` of the field (vectorised rounds: candidates are checked against the accepted units
    with a k-d tree, then among themselves in order).

    Returns the cells, fixed ones first: ``cy, cx, radius`` and :func:`_shape_params` entries, float64 ``[N]``.
    """
    from scipy.spatial import cKDTree

    H, W = shape
    gap = _GAP * diameter
    mean_area = np.pi * (diameter / 2) ** 2 * (1 + _SIZE_SPREAD ** 2 / 3)  # E[s^2] of s ~ U(1 - d, 1 + d)
    target = int(round(coverage * H * W / mean_area))
    pair_probability = touching / (2 - touching)  # a fraction `touching` of the cells are in pairs
    acc_y, acc_x, acc_reach = [fixed["cy"]], [fixed["cx"]], [fixed["reach"]]
    chosen: list[dict[str, np.ndarray]] = [fixed]
    count, acceptance = len(fixed["cy"]), 1.0
    for _round in range(40):
        need = target - count
        if need <= 0:
            break
        # enough candidates for the acceptance of the last round, within a bound on the work per round
        wanted = 1.5 * need / (1 + pair_probability) / max(acceptance, 0.01)
        batch = _candidate_units(rng, int(min(wanted, 4 * target)) + 32, shape, diameter, pair_probability)
        # Pairs first: they need more room and would otherwise lose to singles, leaving fewer than asked for.
        order = np.argsort(~batch["pair"], kind="stable")
        batch = {k: v[order] for k, v in batch.items()}
        ok = np.ones(len(batch["uy"]), dtype=bool)
        ay, ax, areach = (np.concatenate(a) for a in (acc_y, acc_x, acc_reach))
        points = np.column_stack([batch["uy"], batch["ux"]])
        tree = cKDTree(points)
        if len(ay):
            found = tree.sparse_distance_matrix(cKDTree(np.column_stack([ay, ax])),
                                                batch["unit_reach"].max() + areach.max() + gap, output_type="ndarray")
            clash = found["v"] < batch["unit_reach"][found["i"]] + areach[found["j"]] + gap
            ok[found["i"][clash]] = False
        within = tree.query_pairs(2 * batch["unit_reach"].max() + gap, output_type="ndarray")
        if len(within):
            i, j = within[:, 0], within[:, 1]
            dist = np.hypot(*(points[i] - points[j]).T)
            clash = dist < batch["unit_reach"][i] + batch["unit_reach"][j] + gap
            # in candidate order, as if placed one by one: a candidate loses to an earlier one still standing
            for a, b in sorted(zip(np.minimum(i, j)[clash].tolist(), np.maximum(i, j)[clash].tolist()),
                               key=lambda ab: ab[1]):
                if ok[a]:
                    ok[b] = False
        keep = np.flatnonzero(ok)
        acceptance = len(keep) / len(ok)
        cells_per_unit = 1 + batch["pair"][keep]
        keep = keep[np.cumsum(cells_per_unit) <= need + 1]
        if not len(keep):
            continue
        acc_y.append(batch["uy"][keep])
        acc_x.append(batch["ux"][keep])
        acc_reach.append(batch["unit_reach"][keep])
        members = np.column_stack([np.ones(len(keep), dtype=bool), batch["pair"][keep]])
        cells = {k: batch[k][keep][members] for k in fixed}  # row-major: a pair's two cells stay together
        # A pair member whose centre lies outside the field is left out: every cell keeps its centre pixel.
        inside = (cells["cy"] >= -0.5) & (cells["cy"] < H - 0.5) & (cells["cx"] >= -0.5) & (cells["cx"] < W - 0.5)
        chosen.append({k: v[inside] for k, v in cells.items()})
        count += int(inside.sum())
    if count < 0.9 * target:
        logger.warning("placed %d cells, fewer than the %d asked for by coverage %.2f: the field is too full; "
                       "lower the coverage", count, target, coverage)
    return {k: np.concatenate([c[k] for c in chosen]) for k in fixed}


def _draw_cells(cells: dict[str, np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise the cells into instance labels (uint32 ``[H, W]``, cell ``i`` gets ``i + 1``) and parts
    (uint8 ``[H, W]``), each in its own bounding box.

    Where outlines overlap, a pixel goes to the cell in whose outline it lies relatively deepest (smallest
    normalised radius), quantised to 1/250 in a uint8 buffer (one byte a pixel), ties to the earlier cell.
    """
    H, W = shape
    labels = np.zeros((H, W), dtype=np.uint32)
    parts = np.zeros((H, W), dtype=np.uint8)
    depth = np.full((H, W), 255, dtype=np.uint8)
    keys = ("cy", "cx", "reach", "a", "b", "angle", "w3", "w4", "p3", "p4", "na", "nb", "nangle", "ny", "nx")
    columns = [cells[k].tolist() for k in keys]  # python floats: faster than numpy scalars in the loop
    for label, (cy, cx, reach, a, b, angle, w3, w4, p3, p4, na, nb, nangle, ny, nx) in enumerate(zip(*columns), 1):
        y0, y1 = max(int(cy - reach), 0), min(int(math.ceil(cy + reach)) + 1, H)
        x0, x1 = max(int(cx - reach), 0), min(int(math.ceil(cx + reach)) + 1, W)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = (dx * cos + dy * sin) / a, (dy * cos - dx * sin) / b
        phi = np.arctan2(v, u)
        rho = np.hypot(u, v) / (1 + w3 * np.cos(3 * phi + p3) + w4 * np.cos(4 * phi + p4))
        level = np.minimum(rho * 250, 255).astype(np.uint8)
        box = (slice(y0, y1), slice(x0, x1))
        win = (rho < 1) & (level < depth[box])
        depth[box][win] = level[win]
        labels[box][win] = label
        dy, dx = dy - np.float32(ny), dx - np.float32(nx)
        cos, sin = math.cos(nangle), math.sin(nangle)
        nucleus = ((dx * cos + dy * sin) / na) ** 2 + ((dy * cos - dx * sin) / nb) ** 2 < 1
        parts[box][win] = np.where(nucleus[win], 2, 1)
    return labels, parts


def _differs_from_a_neighbour(labels: np.ndarray) -> np.ndarray:
    """bool ``[h, W]``: pixels whose label differs from one of their 4 neighbours inside the array."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical, horizontal = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def _enclose_nuclei(labels: np.ndarray, parts: np.ndarray) -> None:
    """Turn nucleus pixels next to another cell or the background into cytoplasm, in place, band by band:
    each nucleus then lies inside its cell with cytoplasm around it (except at the field border), and nuclei
    of touching cells never touch."""
    H = labels.shape[0]
    for y0 in range(0, H, _BAND):
        y1 = min(y0 + _BAND, H)
        a, b = max(y0 - 1, 0), min(y1 + 1, H)
        edge = _differs_from_a_neighbour(labels[a:b])[y0 - a:y1 - a]
        band = parts[y0:y1]
        band[edge & (band == 2)] = 1


def _row_normals(seed: int, stream: int, y0: int, y1: int, width: int) -> np.ndarray:
    """Standard normal float32 ``[y1 - y0, width]``, each row from its own generator seeded by
    ``(seed, stream, row)``."""
    out = np.empty((y1 - y0, width), dtype=np.float32)
    for i, y in enumerate(range(y0, y1)):
        np.random.default_rng([seed, stream, y]).standard_normal(width, dtype=np.float32, out=out[i])
    return out


def _kernel_radius(sigma: float) -> int:
    return int(4.0 * sigma + 0.5)  # scipy's gaussian_filter with truncate=4


def _white_noise_gain(sigma: float) -> float:
    """Standard deviation of white unit noise after scipy's 2-D gaussian filter of ``sigma``."""
    x = np.arange(-_kernel_radius(sigma), _kernel_radius(sigma) + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    return float((k ** 2).sum())  # sqrt of the 2-D kernel's squared sum, which is (sum k**2)**2: an outer product


def _render(labels: np.ndarray, parts: np.ndarray, seed: int, look: dict[str, Any]) -> np.ndarray:
    """The two fluorescence channels (uint16 ``[2, H, W]``) of a labelled field, band by band.

    Channel 0 (nucleus stain): each nucleus at its own brightness with a chromatin texture, a faint bleed into
    the cytoplasm. Channel 1 (membrane/cytoplasm stain): each cytoplasm at its own brightness, brightest on the
    cell's outline, dim over the nucleus. Then uneven illumination, the microscope's blur (a gaussian PSF),
    camera offset and shot plus read noise (shot noise as a gaussian of the Poisson variance).
    """
    from scipy.ndimage import gaussian_filter

    H, W = labels.shape
    psf, grain = look["psf_sigma"], look["texture_sigma"]
    halo = _kernel_radius(psf) + _kernel_radius(grain) + 2
    grain_scale = 1.0 / _white_noise_gain(grain)
    image = np.empty((2, H, W), dtype=np.uint16)
    xs = ((np.arange(W, dtype=np.float32) + 0.5) / W - 0.5 - look["light_x"])[None, :]
    for y0 in range(0, H, _BAND):
        y1 = min(y0 + _BAND, H)
        a, b = max(y0 - halo, 0), min(y1 + halo, H)
        cell, part = labels[a:b], parts[a:b]
        texture = gaussian_filter(_row_normals(seed, _TEXTURE_STREAM, a, b, W), grain) * np.float32(grain_scale)
        np.clip(texture, -3, 3, out=texture)  # unit variance, bounded: stains stay positive, nuclei unsaturated
        nucleus = part == 2
        ys = ((np.arange(a, b, dtype=np.float32) + 0.5) / H - 0.5 - look["light_y"])[:, None]
        light = np.float32(1.0) - np.float32(look["vignetting"] * 2) * (ys * ys + xs * xs) \
            + np.float32(look["tilt_y"]) * ys + np.float32(look["tilt_x"]) * xs
        rim = (_differs_from_a_neighbour(cell) & (cell > 0)).astype(np.float32)
        stains = (
            look["nucleus_level"][cell] * np.where(nucleus, 1 + 0.25 * texture, np.float32(0.04)),
            look["cytoplasm_level"][cell] * np.where(nucleus, np.float32(0.3), 1 + 0.15 * texture)
            + look["membrane_level"][cell] * rim,
        )
        for channel, stain in enumerate(stains):
            signal = gaussian_filter((stain + np.float32(look["ambient"][channel])) * light, psf)[y0 - a:y1 - a]
            noise = _row_normals(seed, _NOISE_STREAMS[channel], y0, y1, W)
            variance = np.float32(look["gain"]) * np.maximum(signal, 0) + np.float32(look["read"] ** 2)
            signal = signal + np.sqrt(variance) * noise
            signal += np.float32(look["offset"][channel])
            image[channel, y0:y1] = np.clip(np.rint(signal), 0, 65535)
    return image


def _look(rng: np.random.Generator, count: int, diameter: float) -> dict[str, Any]:
    """The field's optics, camera and per-cell brightness (float32 lookup tables ``[count + 1]``, 0 for the
    background), drawn so that the brightest nuclei reach about 20-35k counts: a good part of the 16-bit range
    without saturating."""

    def per_cell(level: float, spread: float, low: float, high: float) -> np.ndarray:
        values = level * np.clip(rng.lognormal(0.0, spread, count), low, high)
        return np.concatenate([[0.0], values]).astype(np.float32)

    stain = rng.uniform(0.85, 1.15, 2)  # how well this sample took each stain
    cytoplasm = per_cell(6000 * stain[1], 0.3, 0.5, 2.0)
    return {
        "nucleus_level": per_cell(11000 * stain[0], 0.25, 0.6, 1.6),
        "cytoplasm_level": cytoplasm,
        "membrane_level": (cytoplasm * rng.uniform(1.2, 1.8, count + 1)).astype(np.float32),
        "ambient": rng.uniform(30, 80, 2),  # out-of-focus and medium fluorescence, lit like the cells
        "offset": rng.uniform(100, 250, 2),  # camera offset (dark level)
        "gain": 2.0,  # counts per photo-electron: sets the shot noise
        "read": 6.0,  # read noise, counts
        "vignetting": rng.uniform(0.2, 0.35),
        "light_y": rng.uniform(-0.15, 0.15), "light_x": rng.uniform(-0.15, 0.15),
        "tilt_y": rng.uniform(-0.1, 0.1), "tilt_x": rng.uniform(-0.1, 0.1),
        "psf_sigma": float(np.clip(diameter / 40, 0.7, 2.0)),
        "texture_sigma": float(np.clip(diameter / 30, 1.0, 3.0)),
    }


def synthetic_field(size: int | Sequence[int], seed: int, cell_diameter: float = 40.0, coverage: float = 0.3,
                    touching: float = 0.15, centres: Sequence[Sequence[float]] | None = None,
                    diameters: float | Sequence[float] | None = None) -> dict[str, Any]:
    """A fluorescence field of view full of cells, with its labels, fully determined by ``seed``.

    Cells are placed at random without overlapping (random sequential placement with a small gap), except
    that a fraction ``touching`` of them come as pairs of touching daughter cells; cells may be cut by the
    field border. Each cell is an ellipse with a slightly wavy outline and holds one elliptic nucleus with
    cytoplasm around it. An 8192 x 8192 field (about 16,000 cells) takes about 15 s on one core; besides its
    outputs (9 bytes a pixel) it needs about one byte a pixel while drawing, then float temporaries of a
    band of rows (about 100 MB for 8192 columns).

    Parameters
    ----------
    size : int or (int, int)
        Field side, or ``(H, W)``, in pixels (at least 16).
    seed : int
        Seed (non-negative): the same seed and arguments give the same field, bit for bit.
    cell_diameter : float
        Mean cell diameter in pixels (at least 10); each cell's varies uniformly by ±20%.
    coverage : float
        Fraction of the field covered by cells, 0 to 0.4 (above about 0.4 the placement runs out of room
        and places fewer cells, with a warning). 0 places only the cells given by ``centres``.
    touching : float
        Fraction of the random cells that touch another (drawn as touching pairs), 0 to 1.
    centres : sequence of (y, x), optional
        Cells to place exactly here, in pixel coordinates (pixel ``(i, j)`` has its centre at ``(i, j)``;
        ``(99.5, 40)`` lies on the boundary between rows 99 and 100), each inside the field
        (``-0.5 <= y < H - 0.5``). They get labels ``1..len(centres)`` in this order, their nucleus centred on
        the given point; random cells are placed around them without touching them. Placed cells that
        overlap each other share the overlap as touching cells do.
    diameters : float or sequence of float, optional
        Diameter of each placed cell (one for all, or one each); ``cell_diameter`` by default.

    Returns
    -------
    dict
        ``image`` uint16 ``[2, H, W]``: channel 0 nucleus stain, channel 1 membrane/cytoplasm stain.
        ``cells`` uint32 ``[H, W]``: instance labels, 0 background, ``1..N``, every label present.
        ``parts`` uint8 ``[H, W]``: 0 background, 1 cytoplasm (cell minus nucleus), 2 nucleus; non-zero exactly
        where ``cells`` is.
        ``centres`` float64 ``[N, 2]`` (y, x) and ``diameters`` float64 ``[N]`` of cell ``label - 1``.
        ``channels``: the two channel names; ``info``: a one-line description (saved by :func:`write_field`).

    Raises
    ------
    ValueError
        An argument out of range, or a placed centre outside the field.
    """
    shape = _as_size(size)
    H, W = shape
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (math.isfinite(cell_diameter) and cell_diameter >= _MIN_DIAMETER):
        raise ValueError(f"cell_diameter must be at least {_MIN_DIAMETER:g} pixels, got {cell_diameter!r}")
    if not 0.0 <= coverage <= 0.6:
        raise ValueError(f"coverage must lie in [0, 0.6] (0.4 at most is reached), got {coverage!r}")
    if not 0.0 <= touching <= 1.0:
        raise ValueError(f"touching must lie in [0, 1], got {touching!r}")
    placed = np.zeros((0, 2)) if centres is None else np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    outside = ~((placed[:, 0] >= -0.5) & (placed[:, 0] < H - 0.5) & (placed[:, 1] >= -0.5) & (placed[:, 1] < W - 0.5))
    if outside.any():
        raise ValueError(f"centres {placed[outside].tolist()} lie outside the {H}x{W} field "
                         f"(-0.5 <= y < {H - 0.5}, -0.5 <= x < {W - 0.5})")
    if diameters is not None and np.ndim(diameters) and np.size(diameters) != len(placed):
        raise ValueError(f"diameters gives {np.size(diameters)} values for {len(placed)} centres")
    placed_diameters = np.broadcast_to(np.asarray(cell_diameter if diameters is None else diameters,
                                                  dtype=np.float64), (len(placed),)).copy()
    if not (np.isfinite(placed_diameters).all() and (placed_diameters >= _MIN_DIAMETER).all()):
        raise ValueError(f"diameters must be at least {_MIN_DIAMETER:g} pixels, got {diameters!r}")

    # Separate streams: placed cells, the random placement and the look each draw their own numbers.
    place_rng, layout_rng, look_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    fixed = _shape_params(place_rng, placed_diameters / 2, centred_nucleus=True)
    fixed.update(cy=placed[:, 0], cx=placed[:, 1], radius=placed_diameters / 2)
    cells = _place_cells(layout_rng, shape, float(cell_diameter), coverage, touching, fixed)
    labels, parts = _draw_cells(cells, shape)
    _enclose_nuclei(labels, parts)
    look = _look(look_rng, len(cells["cy"]), float(cell_diameter))
    image = _render(labels, parts, seed, look)
    logger.debug("synthetic field %dx%d, seed %d: %d cells", H, W, seed, len(cells["cy"]))
    info = (f"synthetic field {H}x{W}, seed {seed}, cell_diameter {cell_diameter:g}, coverage {coverage:g}, "
            f"touching {touching:g}, {len(cells['cy'])} cells; channel 0 nucleus stain, channel 1 membrane stain")
    return {"image": image, "cells": labels, "parts": parts,
            "centres": np.column_stack([cells["cy"], cells["cx"]]), "diameters": 2 * cells["radius"],
            "channels": ("nucleus", "membrane"), "info": info}
