"""Scoring predictions whose cells overlap: a prediction folder's COCO file gives each cell's whole mask."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellrcnn import DataConfig, find_pairs
from cellrcnn.data.dataset import CellDataset
from cellrcnn.evaluation.report import score_folder
from cellrcnn.export.coco import CocoImageCells, coco_dataset, write_coco
from cellrcnn.export.files import export_prediction

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from test_coco import write_coco as write_truth  # noqa: E402
from test_geojson_export import PARTS, as_prediction  # noqa: E402


def test_evaluate_reads_whole_masks_from_a_prediction_folders_coco_file(tmp_path):
    truth = write_truth(tmp_path / "truth")  # the same two overlapping cells and nuclei as the prediction below
    dataset = CellDataset(find_pairs(truth, DataConfig()), DataConfig())
    true_maps = dataset[0][1]["masks"].numpy()
    prediction = as_prediction(true_maps, "a")
    folder = tmp_path / "pred"
    folder.mkdir()
    export_prediction(prediction, folder, PARTS)
    labels_only = score_folder(dataset, PARTS, folder)
    scores = prediction.table["score"].to_numpy()
    write_coco(folder / "cells.json", coco_dataset([CocoImageCells("a.tif", (48, 64), prediction.cell_masks(), scores)],
                                                   PARTS))
    whole = score_folder(dataset, PARTS, folder)
    item = whole["items"][0]
    assert np.array_equal(item.pred_instances, true_maps) and item.scores == {1: 0.9, 2: 0.8}
    summary = {name: r.set_index("metric")["value"] for name, r in (("labels", labels_only["summary"]),
                                                                     ("whole", whole["summary"]))}
    # whole masks: every cell found exactly; label images: the second cell loses its overlap to the first
    assert summary["whole"]["ISBI cell Dice (good cells)"] == pytest.approx(1.0)
    assert summary["whole"]["COCO mask AP"] == pytest.approx(1.0)
    assert summary["labels"]["ISBI cell Dice (good cells)"] < 0.95 and summary["labels"]["COCO mask AP"] < 1.0
    assert pd.notna(summary["whole"]["nucleus detection F1"])
    # a model trained on other category names writes them (cli.predict), and the file reads back by their order
    from cellrcnn import DataConfig as Data
    from cellrcnn.cli.predict import _coco_of

    renamed = _coco_of("a.tif", prediction, PARTS, Data(coco_cell="whole", coco_parts=("nuc",)))
    assert [c["name"] for c in renamed["categories"]] == ["whole", "nuc"]
    write_coco(folder / "cells.json", renamed, overwrite=True)
    again = score_folder(dataset, PARTS, folder)["items"][0]
    assert np.array_equal(again.pred_instances, true_maps) and again.scores == item.scores
