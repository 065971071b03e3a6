"""QuPath cell objects as GeoJSON: each cell's whole outline with its nucleus, its class and its measurements.

QuPath opens the file with *File > Import objects from file* (or by dragging it onto the
image). Each feature is a cell object as QuPath itself writes one (see
:mod:`cellrcnn.io.geojson`, which reads it back):

- ``geometry``: the cell's polygon, its whole outline (overlapping cells overlap);
- ``nucleusGeometry``: the nucleus polygon, a top-level key beside ``geometry``;
- ``properties``: ``objectType`` ``"cell"``, ``classification`` (``name`` and ``color``) and
  ``measurements``, the numbers of the per-cell table (``cells.csv``).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from shapely.geometry import mapping

from ..io.geojson import mask_geometry
from ..io.masks import CellMask
from ..utils.files import atomic_write
from ..viz.style import part_colour

__all__ = ["cell_features", "write_geojson"]

#: Namespace of the features' ids: the same cell of the same image always gets the same id.
_IDS = uuid.UUID("6f1d3a52-5c1e-4d8e-9a57-2b8b1f0c7e11")


def _measurements(row: pd.Series | None) -> dict[str, float]:
    if row is None:
        return {}
    return {str(k): float(v) for k, v in row.items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            and np.isfinite(v)}


def _colour(name: str, names: list[str]) -> list[int]:
    """QuPath's ``[r, g, b]`` of a class: the whole-cell colour for ``cell``, else one colour per class."""
    return [int(round(c)) for c in part_colour(name, names.index(name) if name in names else 0)]


def cell_features(cells: list[CellMask], part_names: tuple[str, ...], table: pd.DataFrame | None = None,
                  image_name: str = "image") -> list[dict]:
    """QuPath cell objects of one image's cells.

    Parameters
    ----------
    cells : list of CellMask
        Cell ``k``'s mask at ``k - 1`` (:meth:`~cellrcnn.inference.measure.Prediction.cell_masks`).
    part_names : tuple of str
        The names of the parts; the part named ``nucleus`` gives the nucleus geometry (none without one).
    table : pandas.DataFrame, optional
        The per-cell table (``cell_id`` and its columns): its numbers become measurements, ``class`` the
        classification (``cell`` without one).
    image_name : str
        Makes the feature ids, which stay the same from run to run for the same cell of the same image.

    Returns
    -------
    list of dict
        GeoJSON features, one per cell with pixels, by cell id.
    """
    nucleus = part_names.index("nucleus") if "nucleus" in part_names else None
    rows = {} if table is None or table.empty else {int(r["cell_id"]): r for _, r in table.iterrows()}
    names = sorted({str(r["class"]) for r in rows.values() if "class" in r and pd.notna(r["class"])} - {"cell"})
    features = []
    for label, cell in enumerate(cells, start=1):
        geometry = mask_geometry(cell.mask, (cell.y0, cell.x0))
        if geometry is None:
            continue
        row = rows.get(label)
        feature = {"type": "Feature", "id": str(uuid.uuid5(_IDS, f"{image_name}/{label}")),
                   "geometry": mapping(geometry)}
        inner = mask_geometry(cell.parts == nucleus, (cell.y0, cell.x0)) if nucleus is not None else None
        if inner is not None:
            feature["nucleusGeometry"] = mapping(inner)
        name = str(row["class"]) if row is not None and "class" in row and pd.notna(row["class"]) else "cell"
        feature["properties"] = {"objectType": "cell", "name": f"cell {label}",
                                 "classification": {"name": name, "color": _colour(name, names)},
                                 "measurements": {"cell_id": float(label), **_measurements(row)}}
        features.append(feature)
    return features


def write_geojson(path: str | os.PathLike, features: list[dict], overwrite: bool = False) -> Path:
    """A GeoJSON FeatureCollection of ``features``, written atomically; an existing file only with
    ``overwrite``."""
    text = json.dumps({"type": "FeatureCollection", "features": features})
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), overwrite=overwrite)
