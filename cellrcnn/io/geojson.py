"""GeoJSON as QuPath writes it: cell objects (a cell outline with its nucleus) and classified annotations.

A QuPath cell object is a feature whose ``geometry`` is the cell polygon and whose
``nucleusGeometry``, a top-level key beside it, is the nucleus polygon;
``properties.objectType`` is ``"cell"`` and ``properties.classification.name`` its class.
Annotations and detections are features with one geometry and, often, a classification.

Coordinates are pixels of the whole image, origin at the top-left corner of its first
pixel: pixel ``(row, col)`` covers ``col..col+1`` by ``row..row+1`` (QuPath's frame).
Polygons from masks follow the pixel edges with the corners cut (marching squares,
scikit-image) and are simplified by at most 0.3 pixel (shapely); a polygon becomes a
mask again by the pixels whose centres lie inside it. Each pixel centre lies at least 0.35 px
(half a diagonal step) from the outline, so a simplification by less moves no centre across it.

Everything wrong with a file raises :class:`~cellrcnn.io.files.DataError`, naming the
file, the feature and what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, shape
from skimage.draw import polygon as fill_polygon
from skimage.measure import find_contours

from ..utils.files import MAX_ANNOTATION_BYTES, read_text_within
from .files import DataError

__all__ = ["SIMPLIFY_TOLERANCE", "GeoObject", "mask_geometry", "rasterize", "read_geojson", "geojson_masks"]

#: The most a simplified outline may move from the pixel outline, in pixels: under the 0.35 px between
#: the outline and the nearest pixel centre, so that the mask read back is the mask written.
SIMPLIFY_TOLERANCE = 0.3


@dataclass(frozen=True)
class GeoObject:
    """One feature of a GeoJSON file: its ``geometry``, the ``nucleus`` of a cell object (else None), its
    ``kind`` (QuPath's objectType: ``cell``, ``annotation``, ``detection``...) and its class (None without)."""

    geometry: Polygon | MultiPolygon
    nucleus: Polygon | MultiPolygon | None
    kind: str
    name: str | None


def mask_geometry(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> Polygon | MultiPolygon | None:
    """The outline of a bool ``[h, w]`` mask as a valid polygon (with its holes) or multipolygon; None when
    the mask is empty. ``origin`` is the ``(row, col)`` of the mask's top-left pixel in the image."""
    if not mask.any():
        return None
    area = None
    for contour in find_contours(np.pad(mask, 1).astype(np.uint8), 0.5):
        if len(contour) < 4:
            continue
        # (row, col) of the padded mask -> (x, y) in the pixel-corner frame; rings inside rings are holes
        ring = shapely.make_valid(Polygon(contour[:, ::-1] - 0.5))
        area = ring if area is None else area.symmetric_difference(ring)
    if area is None or area.is_empty:
        return None
    area = shapely.make_valid(area.simplify(SIMPLIFY_TOLERANCE, preserve_topology=True))
    flat = [p for g in getattr(area, "geoms", [area]) for p in getattr(g, "geoms", [g])
            if isinstance(p, Polygon) and not p.is_empty]
    if not flat:
        return None
    geometry = flat[0] if len(flat) == 1 else MultiPolygon(flat)
    return shapely.affinity.translate(geometry, xoff=origin[1], yoff=origin[0])


def rasterize(geometry: Polygon | MultiPolygon, shape_hw: tuple[int, int]) -> np.ndarray:
    """The bool ``[H, W]`` mask of the pixels whose centres lie inside ``geometry`` (its holes left out)."""
    mask = np.zeros(shape_hw, dtype=bool)
    for polygon in getattr(geometry, "geoms", [geometry]):
        x, y = np.asarray(polygon.exterior.coords).T
        mask[fill_polygon(y - 0.5, x - 0.5, shape_hw)] = True
        for hole in polygon.interiors:
            x, y = np.asarray(hole.coords).T
            mask[fill_polygon(y - 0.5, x - 0.5, shape_hw)] = False
    return mask


def _polygonal(value, path: Path, what: str) -> Polygon | MultiPolygon:
    try:
        geometry = shape(value)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, shapely.errors.GEOSException) as err:
        raise DataError(f"{path}: {what} is not a readable GeoJSON geometry ({err}); export the objects again") \
            from None
    if isinstance(geometry, shapely.GeometryCollection) and not isinstance(geometry, MultiPolygon):
        geometry = MultiPolygon([p for p in geometry.geoms if isinstance(p, Polygon)]) if geometry.geoms else geometry
    if not isinstance(geometry, (Polygon, MultiPolygon)) or geometry.is_empty:
        raise DataError(f"{path}: {what} is a {geometry.geom_type}, not a polygon; only areas can be masks "
                        f"(remove points and lines, or convert them to areas in QuPath)")
    if geometry.is_valid:
        return geometry
    # a self-crossing outline repaired: keep its areas (the repair may add the lines where it crossed)
    repaired = shapely.make_valid(geometry)
    areas = [p for g in getattr(repaired, "geoms", [repaired]) for p in getattr(g, "geoms", [g])
             if isinstance(p, Polygon) and not p.is_empty]
    if not areas:
        raise DataError(f"{path}: {what} has no area once its crossing outline is repaired; redraw it in QuPath")
    return areas[0] if len(areas) == 1 else MultiPolygon(areas)


def read_geojson(path: str | os.PathLike) -> list[GeoObject]:
    """The objects of a GeoJSON FeatureCollection, in file order.

    Raises
    ------
    DataError
        A file that cannot be read, is not JSON or not a FeatureCollection, or a feature without an area.
    """
    path = Path(path)
    try:
        data = json.loads(read_text_within(path, MAX_ANNOTATION_BYTES, "export the objects of fewer images or "
                                                                       "regions per file from QuPath"))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read ({err}); check the file") from None
    except DataError:  # too large: its own message
        raise
    except ValueError as err:
        raise DataError(f"{path}: is not valid JSON ({err}); export the objects from QuPath again") from None
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or not isinstance(features, list):
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: is a GeoJSON {kind!s}, not a FeatureCollection; in QuPath use File > Export "
                        f"objects as GeoJSON with 'Export as FeatureCollection' ticked")
    objects = []
    for i, feature in enumerate(features):
        if not isinstance(feature, dict) or "geometry" not in feature:
            raise DataError(f"{path}: feature {i} has no geometry; export the objects again")
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise DataError(f"{path}: the properties of feature {i} are {type(properties).__name__}, not an object; "
                            f"export the objects again")
        classification = properties.get("classification") or {}
        name = classification.get("name") if isinstance(classification, dict) else None
        nucleus = feature.get("nucleusGeometry")
        objects.append(GeoObject(
            geometry=_polygonal(feature["geometry"], path, f"feature {i}"),
            nucleus=_polygonal(nucleus, path, f"the nucleus of feature {i}") if nucleus else None,
            kind=str(properties.get("objectType", properties.get("object_type", "annotation"))),
            name=str(name) if name is not None else None))
    return objects


def geojson_masks(path: str | os.PathLike, shape_hw: tuple[int, int], cell: str, parts: tuple[str, ...]) -> dict:
    """The cell and part masks of one image's GeoJSON file, as :func:`~cellrcnn.io.coco.coco_masks` gives them.

    Cell objects are cells, their nucleus geometry the part named ``nucleus`` (tied to them). Other
    objects are parts when their class names a part, and cells otherwise (their class, if it is not
    ``cell``, is the cell's class).

    Returns
    -------
    dict
        ``cells`` bool ``[N, H, W]``; ``parts`` a dict of part name to bool ``[M, H, W]``; ``classes``
        each cell's class name (None when unclassified); ``links`` a dict of part name to int ``[M]``
        (each part's cell), for the parts whose every object is a cell object's nucleus.
    """
    objects = read_geojson(path)
    cells, classes, found = [], [], {name: [] for name in parts}
    owners = {name: [] for name in parts}
    for obj in objects:
        if obj.kind != "cell" and obj.name in parts:
            found[obj.name].append(rasterize(obj.geometry, shape_hw))
            owners[obj.name].append(-1)
            continue
        cells.append(rasterize(obj.geometry, shape_hw))
        classes.append(None if obj.name in (None, cell) else obj.name)
        if obj.nucleus is not None and "nucleus" in parts:
            found["nucleus"].append(rasterize(obj.nucleus, shape_hw))
            owners["nucleus"].append(len(cells) - 1)
    if not cells:
        raise DataError(f"{path}: holds no cell (objects classified {', '.join(map(repr, parts))} are parts); "
                        f"annotate whole cells, or export QuPath cell objects")

    def stack(masks: list[np.ndarray]) -> np.ndarray:
        return np.stack(masks) if masks else np.zeros((0, *shape_hw), bool)

    links = {name: np.array(owners[name], dtype=np.int64) for name in parts
             if owners[name] and min(owners[name]) >= 0}
    return {"cells": stack(cells), "parts": {name: stack(m) for name, m in found.items()}, "classes": classes,
            "links": links}
