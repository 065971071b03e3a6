"""QuPath GeoJSON out and back in, and whole outlines of overlapping cells in every overlap-keeping output."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import roifile
import shapely
from pycocotools import mask as coco_mask
from shapely.geometry import shape
from skimage.draw import polygon as fill_polygon

from cellrcnn import DataConfig, find_pairs
from cellrcnn.data.dataset import load_sample
from cellrcnn.export.coco import CocoImageCells, coco_dataset
from cellrcnn.export.files import export_prediction
from cellrcnn.export.geojson import cell_features, write_geojson
from cellrcnn.inference.measure import Prediction, measure_cells
from cellrcnn.io.geojson import geojson_masks, read_geojson
from cellrcnn.io.masks import cell_masks_from_instances

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from test_coco import CELL_A, CELL_B, ISBI, NUC_A, NUC_B  # noqa: E402

PARTS = ("background", "cytoplasm", "nucleus")


def iou(a, b):
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def overlapping_pair() -> np.ndarray:
    """uint8 [2, H, W]: two overlapping cells, B's nucleus under A (nucleus of B only, inside A too)."""
    instances = np.stack([CELL_A, CELL_B]).astype(np.uint8)
    instances[0][NUC_A] = 2
    instances[1][NUC_B] = 2
    return instances


def as_prediction(instances: np.ndarray, name: str = "img") -> Prediction:
    """A prediction whose cells are ``instances``: label images by order (the first wins an overlap)."""
    cells = np.zeros(instances.shape[1:], np.uint16)
    parts = np.zeros(instances.shape[1:], np.uint8)
    for k in range(len(instances), 0, -1):
        cells[instances[k - 1] > 0], parts[instances[k - 1] > 0] = k, instances[k - 1][instances[k - 1] > 0]
    image = np.full((*instances.shape[1:], 3), 0.5, np.float32)
    table = measure_cells(cells, parts, image, PARTS, {k: 1.0 - k / 10 for k in range(1, len(instances) + 1)},
                          {k: ("lymphocyte" if k == 1 else "cell") for k in range(1, len(instances) + 1)}, None, name)
    return Prediction(name, image, cells, parts, table, masks=cell_masks_from_instances(instances))


def test_geojson_written_and_read_back_gives_the_same_cells_and_nuclei(tmp_path):
    instances = overlapping_pair()
    prediction = as_prediction(instances)
    path = write_geojson(tmp_path / "img.geojson", cell_features(prediction.cell_masks(), PARTS, prediction.table,
                                                                  "img"))
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    for feature in data["features"]:  # the keys where QuPath writes them
        assert {"type", "id", "geometry", "nucleusGeometry", "properties"} <= set(feature)
        assert feature["properties"]["objectType"] == "cell"
        assert set(feature["properties"]["classification"]) == {"name", "color"}
        assert {"area_px", "score", "nucleus_area_px"} <= set(feature["properties"]["measurements"])
        for key in ("geometry", "nucleusGeometry"):
            assert shape(feature[key]).is_valid and shape(feature[key]).geom_type == "Polygon"
    names = [f["properties"]["classification"]["name"] for f in data["features"]]
    assert names == ["lymphocyte", "cell"]
    back = geojson_masks(path, instances.shape[1:], "cell", ("nucleus",))
    assert back["cells"].shape == (2, *instances.shape[1:]) and back["classes"] == ["lymphocyte", None]
    assert back["links"]["nucleus"].tolist() == [0, 1]  # each nucleus tied to its own cell object
    for k in range(2):
        assert iou(back["cells"][k], instances[k] > 0) >= 0.98
        assert iou(back["parts"]["nucleus"][k], instances[k] == 2) >= 0.98
    assert (back["cells"].sum(axis=0) == 2).sum() > 100  # the overlap is in both cells
    # a second write of the same cells gives the same feature ids (QuPath matches objects by id)
    again = cell_features(prediction.cell_masks(), PARTS, prediction.table, "img")
    assert [f["id"] for f in again] == [f["id"] for f in data["features"]]


@pytest.mark.skipif(not ISBI.is_dir(), reason="needs ../shared/datasets/isbi2014_cervical")
def test_isbi_cells_survive_geojson_and_every_output_keeps_their_whole_outlines(tmp_path):
    """Real overlapping cervical cells: GeoJSON, ROI set and COCO file each hold every cell's whole mask."""
    for pair in find_pairs(ISBI, DataConfig()):  # the first image with at least 4 cells, some overlapping
        instances = load_sample(pair, DataConfig())["instances"]
        if len(instances) >= 4 and (np.count_nonzero(instances > 0, axis=0) > 1).sum() > 500:
            break
    shape_hw = instances.shape[1:]
    prediction = as_prediction(instances, pair.name)
    paths = export_prediction(prediction, tmp_path, PARTS, rois=True, geojson=True)
    back = geojson_masks(paths["geojson"], shape_hw, "cell", ("nucleus",))
    nuclei = iter(back["parts"]["nucleus"])
    for k, own in enumerate(instances):
        assert iou(back["cells"][k], own > 0) >= 0.98, k
        if (own == 2).any():
            assert iou(next(nuclei), own == 2) >= 0.98, k
    for obj in read_geojson(paths["geojson"]):
        assert obj.geometry.is_valid and (obj.nucleus is None or obj.nucleus.is_valid)
    rois = roifile.roiread(paths["rois"])
    assert len(rois) == len(instances)
    for own, roi in zip(instances, rois):  # each ROI the whole outline, not the label-image remainder
        filled = np.zeros(shape_hw, bool)
        x, y = roi.coordinates().T
        filled[fill_polygon(y, x, shape_hw)] = True
        assert iou(filled, own > 0) >= 0.97
    coco = coco_dataset([CocoImageCells(pair.image.name, shape_hw, prediction.cell_masks())], PARTS)
    cells = [a for a in coco["annotations"] if a["category_id"] == 1]
    for own, ann in zip(instances, cells):
        rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
        assert np.array_equal(coco_mask.decode(rle).astype(bool), own > 0)


def test_geojson_that_is_no_feature_collection_or_holds_no_area_is_refused(tmp_path):
    from cellrcnn import DataError

    cases = {
        "feature.geojson": {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
        "list.geojson": [1, 2],
        "point.geojson": {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}]},
        "broken.geojson": "{not json",
    }
    expected = {"feature.geojson": "is a GeoJSON Feature, not a FeatureCollection",
                "list.geojson": "not a FeatureCollection", "point.geojson": "feature 0 is a Point, not a polygon",
                "broken.geojson": "is not valid JSON"}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(DataError, match=expected[name]) as err:
            read_geojson(path)
        assert str(path) in str(err.value)
    assert shapely.__version__ >= "2"


def test_outline_polygons_give_back_the_mask_pixel_for_pixel():
    """Holes, two pieces, one-pixel necks and single pixels: the polygon read back is the mask written."""
    from cellrcnn.io.geojson import mask_geometry, rasterize

    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random((24, 30)) < 0.55
        geometry = mask_geometry(mask, (5, 7))
        assert geometry.is_valid
        back = rasterize(geometry, (40, 40))
        assert np.array_equal(back[5:29, 7:37], mask) and back.sum() == mask.sum()
    ring = np.zeros((20, 20), bool)
    ring[3:17, 3:17], ring[7:13, 7:13] = True, False
    assert len(mask_geometry(ring).interiors) == 1
