"""QuPath GeoJSON as a training layout: cell objects with their nuclei, classified annotations, overlaps kept."""

import json

import numpy as np
import pytest
import tifffile
from shapely.geometry import mapping
from test_coco import CELL_A, CELL_B, H, NUC_A, NUC_B, W, rle, write_coco

from cellrcnn import DataConfig, DataError, check_folder, find_pairs
from cellrcnn.data.dataset import CellDataset, load_sample
from cellrcnn.io.geojson import mask_geometry


def feature(mask, kind="annotation", name=None, nucleus=None):
    out = {"type": "Feature", "geometry": mapping(mask_geometry(mask)),
           "properties": {"objectType": kind, **({"classification": {"name": name}} if name else {})}}
    if nucleus is not None:
        out["nucleusGeometry"] = mapping(mask_geometry(nucleus))
    return out


def write_geojson_folder(folder, features, name="a.tif.geojson"):
    """An image and its QuPath export (QuPath names it after the whole image name)."""
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "a.tif", (np.random.default_rng(0).random((H, W)) * 255).astype(np.uint8))
    (folder / name).write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return folder


def test_qupath_cells_and_classified_annotations_are_read_without_a_flag(tmp_path):
    # A: a cell object with its nucleus; B: an annotation classified 'cell' with its nucleus as an annotation
    # classified 'nucleus', which lies under A and is tied to B by the rule.
    folder = write_geojson_folder(tmp_path / "data", [feature(CELL_A, "cell", None, NUC_A),
                                                       feature(NUC_B, name="nucleus"),
                                                       feature(CELL_B, name="cell")])
    pairs = find_pairs(folder, DataConfig())
    assert [(p.image.name, p.annotations.name) for p in pairs] == [("a.tif", "a.tif.geojson")]
    sample = load_sample(pairs[0], DataConfig())
    maps = sample["instances"]
    assert maps.shape == (2, H, W) and sample["untied"] == 0
    assert np.array_equal(maps[0] > 0, CELL_A) and np.array_equal(maps[1] > 0, CELL_B)  # pixel for pixel
    assert np.array_equal(maps[0] == 2, NUC_A) and np.array_equal(maps[1] == 2, NUC_B)
    assert (maps[0][NUC_B] == 1).all() and NUC_B[CELL_A].any()  # B's nucleus under A is A's cytoplasm
    image, target = CellDataset(pairs, DataConfig())[0]
    assert target["masks"].shape == (2, H, W) and target["labels"].tolist() == [1, 1]
    report = check_folder(folder, DataConfig(), ("background", "cytoplasm", "nucleus"))
    assert report["problems"] == [] and report["table"].iloc[0]["cells"] == 2


def test_cell_classes_come_from_geojson_classifications_and_coco_categories(tmp_path):
    config = DataConfig(class_names=("lymphocyte", "neutrophil"))
    folder = write_geojson_folder(tmp_path / "qupath", [feature(CELL_A, "cell", "neutrophil", NUC_A),
                                                         feature(CELL_B, "cell", "lymphocyte", NUC_B)], "a.geojson")
    _, target = CellDataset(find_pairs(folder, config), config)[0]
    assert target["labels"].tolist() == [2, 1]
    cropped = DataConfig(class_names=("lymphocyte", "neutrophil"), crop=32)  # classes follow their cells into a crop
    _, target = CellDataset(find_pairs(folder, cropped), cropped, seed=0)[0]
    assert target["masks"].shape[1:] == (32, 32) and set(target["labels"].tolist()) <= {1, 2}
    # COCO: a category named after a class holds cells of that class; a cell's attributes.class names one too
    anns = [{"id": 1, "image_id": 7, "category_id": 3, "segmentation": rle(CELL_A)},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": rle(CELL_B),
             "attributes": {"class": "neutrophil"}},
            {"id": 3, "image_id": 7, "category_id": 2, "segmentation": rle(NUC_A)}]
    categories = [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}, {"id": 3, "name": "lymphocyte"}]
    coco = write_coco(tmp_path / "coco", anns, categories)
    _, target = CellDataset(find_pairs(coco, config), config)[0]
    assert sorted(target["labels"].tolist()) == [1, 2] and len(target["masks"]) == 2
    other = DataConfig(class_names=("lymphocyte", "monocyte"))
    with pytest.raises(DataError, match="a.tif is classified 'neutrophil', which is not among data.class_names"):
        load_sample(find_pairs(folder, other)[0], other)


def test_bad_geojson_layouts_are_named(tmp_path):
    folder = write_geojson_folder(tmp_path / "data", [feature(NUC_A, name="nucleus")], "a.geojson")
    with pytest.raises(DataError, match=r"a.geojson: holds no cell"):
        load_sample(find_pairs(folder, DataConfig())[0], DataConfig())
    (folder / "a.geojson").write_text(json.dumps(feature(CELL_A, "cell")))
    with pytest.raises(DataError, match=r"a.geojson: is a GeoJSON Feature, not a FeatureCollection"):
        load_sample(find_pairs(folder, DataConfig())[0], DataConfig())
    with (folder / "a.geojson").open("r+b") as f:  # sparse: refused from its size, before it is read
        f.truncate(2**30 + 1)
    with pytest.raises(DataError, match=r"a.geojson: 1,024 MiB, more than the 1,024 MiB .*export the objects of fewer"):
        load_sample(find_pairs(folder, DataConfig())[0], DataConfig())
    (folder / "a.geojson").unlink()
    with pytest.raises(DataError, match="no GeoJSON files; data.encoding='geojson' needs"):
        find_pairs(folder, DataConfig(encoding="geojson"))


def test_check_data_names_a_nucleus_lying_wholly_outside_its_image(tmp_path, capsys):
    """Issue 37 (11): such a nucleus was left out of training without a word, and check-data found no problem."""
    from shapely.affinity import translate
    from shapely.geometry import shape

    from cellrcnn.cli import check_data_main

    cell = feature(CELL_A, "cell", None, NUC_A)
    cell["nucleusGeometry"] = mapping(translate(shape(cell["nucleusGeometry"]), xoff=10 * W))
    folder = write_geojson_folder(tmp_path / "data", [cell])
    assert check_data_main([str(folder)]) == 1
    err = capsys.readouterr().err
    assert "a.tif: 1 object(s) of a.tif.geojson have no pixel in the 64x48 image (wholly outside it)" in err
