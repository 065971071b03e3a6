"""COCO instance files as a training layout: overlapping cells keep their whole masks, parts tie to their cells."""

import json

import numpy as np
import pytest
import tifffile
from conftest import REPO
from pycocotools import mask as coco_mask

from cellrcnn import DataConfig, DataError, check_folder, find_pairs
from cellrcnn.data.dataset import build_target, load_sample
from cellrcnn.io.coco import decode_annotation

ISBI = REPO.parent / "shared" / "datasets" / "isbi2014_cervical"
H, W = 48, 64


def disk(cy, cx, r):
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2


def polygon(mask):
    """The outline of a convex mask as a COCO polygon (x, y pairs)."""
    from skimage.measure import find_contours
    contour = max(find_contours(np.pad(mask, 1).astype(float), 0.5), key=len) - 1
    return [float(v) for point in contour[:, ::-1] for v in point]


def rle(mask):
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


#: Two cells overlapping by a third of their width; B's nucleus lies under A, inside both cells.
CELL_A, CELL_B = disk(24, 24, 16), disk(24, 40, 16)
NUC_A, NUC_B = disk(24, 14, 4), disk(24, 31, 4)


def write_coco(folder, annotations=None, categories=None, images=None):
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "a.tif", (np.random.default_rng(0).random((H, W)) * 255).astype(np.uint8))
    anns = annotations if annotations is not None else [
        {"id": 1, "image_id": 7, "category_id": 1, "segmentation": rle(CELL_A)},
        {"id": 2, "image_id": 7, "category_id": 1, "segmentation": [polygon(CELL_B)]},
        {"id": 3, "image_id": 7, "category_id": 2, "segmentation": rle(NUC_B)},  # listed first: the rule, not order
        {"id": 4, "image_id": 7, "category_id": 2, "segmentation": [polygon(NUC_A)]},
    ]
    data = {"images": images or [{"id": 7, "file_name": "a.tif", "height": H, "width": W}],
            "categories": categories or [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}],
            "annotations": anns}
    (folder / "annotations.json").write_text(json.dumps(data))
    return folder


def test_overlapping_cells_keep_their_whole_masks_and_their_own_nuclei(tmp_path):
    config = DataConfig()  # no layout flag: the folder's one COCO file is found
    pairs = find_pairs(write_coco(tmp_path / "data"), config)
    assert [(p.image.name, p.image_id) for p in pairs] == [("a.tif", 7)]
    sample = load_sample(pairs[0], config)
    target = build_target(sample["parts"], sample["cells"], 1, config, sample["instances"])
    masks = target["masks"]
    assert masks.shape == (2, H, W) and sample["untied"] == 0
    overlap = CELL_A & CELL_B
    assert overlap.sum() > 100
    # each cell keeps its whole mask, the overlap inside both (the polygon decodes to the disk within its outline)
    assert np.array_equal(masks[0] > 0, CELL_A)
    assert np.array_equal(masks[1] > 0, decode_annotation({"segmentation": [polygon(CELL_B)]}, H, W))
    assert np.abs((masks[1] > 0).astype(int) - CELL_B).sum() <= 0.03 * CELL_B.sum()  # the polygon's own pixels
    # inside each cell its own nucleus is nucleus; B's nucleus under A is A's cytoplasm
    nucleus_a = decode_annotation({"segmentation": [polygon(NUC_A)]}, H, W)  # given as a polygon
    assert np.array_equal(masks[0] == 2, nucleus_a) and (nucleus_a & NUC_A).sum() >= 0.8 * NUC_A.sum()
    assert np.array_equal(masks[1] == 2, NUC_B & (masks[1] > 0))
    assert (masks[0][NUC_B] == 1).all() and NUC_B[CELL_A].any()
    assert np.array_equal(target["boxes"][0], [9, 9, 40, 40])  # pixel edges of columns and rows 9..39


def test_check_data_reports_untied_parts_and_overlap(tmp_path):
    stray = disk(44, 60, 3)  # a nucleus in no cell
    anns = [{"id": 1, "image_id": 7, "category_id": 1, "segmentation": rle(CELL_A)},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": rle(CELL_B)},
            {"id": 3, "image_id": 7, "category_id": 2, "segmentation": rle(NUC_A)},
            {"id": 4, "image_id": 7, "category_id": 2, "segmentation": rle(stray)}]
    report = check_folder(write_coco(tmp_path / "data", anns), DataConfig(), ("background", "cytoplasm", "nucleus"))
    assert len(report["problems"]) == 1 and "1 part annotation(s) of annotations.json lie in no cell" in \
        report["problems"][0] and "a.tif" in report["problems"][0]
    row = report["table"].iloc[0]
    assert row["cells"] == 2
    assert row["overlap_fraction"] == pytest.approx((CELL_A & CELL_B).sum() / (CELL_A | CELL_B).sum())


@pytest.mark.parametrize("change, message", [
    ({"annotations": [{"id": 9, "image_id": 3, "category_id": 1, "segmentation": []}]},
     "annotation 9 points to image_id 3, which no entry of images has"),
    ({"annotations": [{"id": 9, "image_id": 7, "category_id": 1, "segmentation": [[1.0, 2.0, 3.0, 4.0]]}]},
     "annotation 9: a polygon needs at least 3 points"),
    ({"annotations": [{"id": 9, "image_id": 7, "category_id": 1,
                       "segmentation": rle(np.ones((10, 10), bool))}]},
     "annotation 9: RLE of size 10x10 for an image of 64x48 pixels"),
    ({"categories": [{"id": 1, "name": "whole"}, {"id": 2, "name": "nucleus"}]},
     "no category 'cell' (it has 'whole', 'nucleus'); set data.coco_cell and data.coco_parts"),
])
def test_bad_coco_files_give_one_clear_message(tmp_path, change, message):
    folder = write_coco(tmp_path / "data", **change)
    with pytest.raises(DataError, match="annotations.json") as err:
        load_sample(find_pairs(folder, DataConfig())[0], DataConfig())
    assert message in str(err.value)


def test_a_malformed_json_or_a_missing_image_is_named(tmp_path):
    folder = write_coco(tmp_path / "data", images=[{"id": 7, "file_name": "a.tif", "height": H, "width": W},
                                                   {"id": 8, "file_name": "gone.tif", "height": H, "width": W}])
    with pytest.raises(DataError, match=r"gone.tif: listed in annotations.json but not found"):
        find_pairs(folder, DataConfig())
    (folder / "annotations.json").write_text('{"images": [')
    with pytest.raises(DataError, match=r"annotations.json: is not valid JSON \(.*\); export the annotations again"):
        find_pairs(folder, DataConfig())
    with (folder / "annotations.json").open("r+b") as f:  # 1 GiB and a byte, sparse: refused before it is read
        f.truncate(2**30 + 1)
    with pytest.raises(DataError, match=r"annotations.json: 1,024 MiB, more than the 1,024 MiB such a file may hold; "
                                        r"split the data set"):
        find_pairs(folder, DataConfig())
    (folder / "annotations.json").write_text('{"something": "else"}')
    with pytest.raises(DataError, match="no COCO annotation files; data.encoding='coco' needs exactly one"):
        find_pairs(folder, DataConfig(encoding="coco"))


@pytest.mark.skipif(not ISBI.is_dir(), reason="needs ../shared/datasets/isbi2014_cervical")
def test_isbi_cells_each_get_their_one_nucleus():
    config = DataConfig()
    report = check_folder(ISBI, config, ("background", "cytoplasm", "nucleus"))
    assert report["problems"] == [] and len(report["table"]) == 30
    assert report["table"]["cells"].sum() == 177 and report["table"]["overlap_fraction"].max() > 0.3
    pairs = find_pairs(ISBI, config)
    for pair in pairs[:6]:
        instances = load_sample(pair, config)["instances"]
        assert all((m == 2).any() for m in instances)  # every cell has its nucleus
        nuclei = [set(zip(*np.nonzero(m == 2))) for m in instances]
        assert all(a.isdisjoint(b) for i, a in enumerate(nuclei) for b in nuclei[i + 1:])  # and no two share one


@pytest.mark.parametrize("file_name", ["../outside.tif", "/tmp/outside.tif", "images/../../outside.tif",
                                       "..\\outside.tif", "C:\\data\\outside.tif"])
def test_a_file_name_that_leaves_the_folder_is_refused_by_check_data_and_evaluate(tmp_path, capsys, file_name):
    """Issue 37 (5): a COCO file names only images inside its folder; check-data (exit 1: a problem found) and
    evaluate (exit 2) say so in one line and read nothing outside."""
    from conftest import fails_here, files_under

    from cellrcnn.cli import check_data_main

    data = write_coco(tmp_path / "data", images=[{"id": 7, "file_name": file_name, "height": H, "width": W}])
    tifffile.imwrite(tmp_path / "outside.tif", np.zeros((H, W), np.uint8))
    before = files_under(tmp_path)
    assert check_data_main([str(data)]) == 1
    line, = capsys.readouterr().err.strip().splitlines()
    assert f"annotations.json: image 7: file_name {file_name!r} points outside the folder" in line
    assert files_under(tmp_path) == before
    (tmp_path / "pred").mkdir()
    line = fails_here("evaluate", data, "--pred-dir", tmp_path / "pred", "--out", tmp_path / "scores",
                      at=tmp_path)
    assert "points outside the folder" in line
