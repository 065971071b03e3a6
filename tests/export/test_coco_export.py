"""COCO out: every cell's whole mask and its linked parts, read back exactly."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellrcnn import DataConfig, find_pairs
from cellrcnn.data.dataset import load_sample
from cellrcnn.data.targets import instances_from_labels
from cellrcnn.export.coco import CocoImageCells, coco_dataset, write_coco

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from test_coco import ISBI, write_coco as write_test_coco  # noqa: E402

PARTS = ("background", "cytoplasm", "nucleus")


def round_trip(folder, tmp_path, config=DataConfig()):
    """Read a COCO folder, write its cells as COCO, and read that back: the instance maps of both."""
    pairs = find_pairs(folder, config)
    before = [load_sample(pair, config)["instances"] for pair in pairs]
    out = tmp_path / "out"
    out.mkdir()
    for pair in pairs:
        (out / pair.image.name).symlink_to(pair.image)
    write_coco(out / "cells.json", coco_dataset([CocoImageCells.from_instances(p.image.name, i) for p, i in zip(pairs, before)],
                                                PARTS))
    after = [load_sample(pair, config)["instances"] for pair in find_pairs(out, config)]
    return before, after, json.loads((out / "cells.json").read_text())


def test_coco_in_targets_coco_out_keeps_every_mask_exactly(tmp_path):
    before, after, written = round_trip(write_test_coco(tmp_path / "data"), tmp_path)
    assert len(before[0]) == 2 and (np.count_nonzero(before[0] > 0, axis=0) == 2).any()  # they overlap
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    cells = [a for a in written["annotations"] if a["category_id"] == 1]
    nuclei = [a for a in written["annotations"] if a["category_id"] == 2]
    assert [c["name"] for c in written["categories"]] == ["cell", "nucleus"]
    assert sorted(n["cell_id"] for n in nuclei) == sorted(c["id"] for c in cells)  # each nucleus names its cell
    assert cells[0]["bbox"] == [9.0, 9.0, 31.0, 31.0] and cells[0]["area"] == int((before[0][0] > 0).sum())


@pytest.mark.skipif(not ISBI.is_dir(), reason="needs ../shared/datasets/isbi2014_cervical")
def test_isbi_cells_survive_the_round_trip(tmp_path):
    isbi = tmp_path / "isbi"
    isbi.mkdir()
    data = json.loads((ISBI / "annotations.json").read_text())
    keep = {i["id"] for i in data["images"][:4]}
    data["images"] = [i for i in data["images"] if i["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    (isbi / "annotations.json").write_text(json.dumps(data))
    for image in data["images"]:
        (isbi / image["file_name"]).symlink_to(ISBI / image["file_name"])
    before, after, _ = round_trip(isbi, tmp_path)
    assert sum(len(b) for b in before) >= 8 and any((np.count_nonzero(b > 0, axis=0) > 1).any() for b in before)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_a_prediction_goes_out_from_its_label_images(tmp_path):
    cells = np.zeros((20, 30), np.uint16)
    cells[2:10, 3:12], cells[12:18, 15:28] = 1, 2
    parts = np.where(cells > 0, 1, 0).astype(np.uint8)
    parts[4:7, 5:8] = 2
    parts[1, 1] = 2  # outside every cell: no cell's part
    instances = instances_from_labels(cells, parts)
    assert instances.shape == (2, 20, 30) and (instances[1] == 2).sum() == 0 and (instances[0] == 2).sum() == 9
    coco = coco_dataset([CocoImageCells.from_instances("a.tif", instances, scores=np.array([0.9, 0.7]), classes=["cell", "cell"])],
                        PARTS)
    assert [a["score"] for a in coco["annotations"] if a["category_id"] == 1] == [0.9, 0.7]
    assert [a["attributes"]["class"] for a in coco["annotations"] if a["category_id"] == 1] == ["cell", "cell"]
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((20, 30), np.uint8))
    write_coco(tmp_path / "cells.json", coco)
    with pytest.raises(FileExistsError):
        write_coco(tmp_path / "cells.json", coco)
    read = load_sample(find_pairs(tmp_path, DataConfig())[0], DataConfig(min_area=1))["instances"]
    assert np.array_equal(read, instances)
