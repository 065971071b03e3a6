"""The one rule for the cells a prediction keeps: pure functions, no model."""

import numpy as np
import pytest

from cellrcnn import ModelConfig
from cellrcnn.inference.selection import (CROP_LIKE, CellChoice, border_labels, keeps_largest, kept_cells,
                                          looks_like_training_crops, nucleated)

SCORES = np.array([0.9, 0.8, 0.6, 0.3])  # label order: descending score
AREAS = np.array([100, 400, 900, 2000])
COMPLETE = np.array([True, True, False, True])


def test_threshold_then_best_scoring_then_the_largest_complete_cell():
    assert kept_cells(SCORES, AREAS, COMPLETE).tolist() == [0, 1, 2, 3]
    assert kept_cells(SCORES, AREAS, COMPLETE, score_threshold=0.5).tolist() == [0, 1, 2]
    assert kept_cells(SCORES, AREAS, COMPLETE, max_cells=2).tolist() == [0, 1]
    # the largest of those left, among the complete ones: 3 scores too low, 2 touches the border
    assert kept_cells(SCORES, AREAS, COMPLETE, score_threshold=0.5, largest=True).tolist() == [1]
    assert kept_cells(SCORES, AREAS, COMPLETE, largest=True).tolist() == [3]
    # every cell touching the border: the largest of them
    assert kept_cells(SCORES, AREAS, np.zeros(4, bool), largest=True).tolist() == [3]
    assert kept_cells(np.zeros(0), np.zeros(0), np.zeros(0, bool), largest=True).tolist() == []
    with pytest.raises(ValueError, match="one length"):
        kept_cells(SCORES, AREAS[:2], COMPLETE)


def test_the_kept_single_cell_has_a_nucleus_by_the_nucleated_and_score_rules():
    # cell 3 is a large false detection with no nucleus (a ring of red cells); 1 and 0 are nucleated
    nucleus = np.array([True, True, False, False])
    assert kept_cells(SCORES, AREAS, COMPLETE, largest=True, nucleus=nucleus, single_rule="largest").tolist() == [3]
    assert kept_cells(SCORES, AREAS, COMPLETE, largest=True, nucleus=nucleus).tolist() == [1]  # the default rule
    assert kept_cells(SCORES, AREAS, COMPLETE, largest=True, nucleus=nucleus, single_rule="score").tolist() == [0]
    # no nucleus anywhere, or a model without a nucleus part: the largest complete cell, as before
    for none in (np.zeros(4, bool), None):
        assert kept_cells(SCORES, AREAS, COMPLETE, largest=True, nucleus=none).tolist() == [3]
    # the nucleated cell touching the border loses to a complete one
    assert kept_cells(SCORES, AREAS, COMPLETE, largest=True, nucleus=np.array([True, False, True, False])).tolist() == [0]
    with pytest.raises(ValueError, match="single_rule='biggest'"):
        kept_cells(SCORES, AREAS, COMPLETE, largest=True, single_rule="biggest")
    with pytest.raises(ValueError, match="single_rule"):
        CellChoice(single_rule="biggest")


def test_nucleated_counts_each_cells_nucleus_pixels():
    cells = np.zeros((20, 20), int)
    cells[1:11, 1:11] = 1  # 100 px, 1 of them nucleus: exactly the minimum share
    cells[12:20, 12:20] = 2  # 64 px, no nucleus
    parts = np.where(cells > 0, 1, 0)
    parts[5, 5] = 2
    names = ("background", "cytoplasm", "nucleus")
    assert nucleated(cells, parts, 3, names).tolist() == [True, False, False]  # label 3: no pixel at all
    assert nucleated(cells, parts, 3, ("background", "cell")) is None


def test_the_single_cell_choice_holds_only_for_images_like_the_training_crops():
    crops = ModelConfig(min_size=128, max_size=128, single_cell=True)
    scale = 1.0
    like = (120, 120)
    field = (int(CROP_LIKE * 128) + 1, 100)
    assert looks_like_training_crops(crops, like, scale) and not looks_like_training_crops(crops, field, scale)
    assert looks_like_training_crops(crops, field, 0.5)  # shrunk for the network, it is crop-sized again
    assert keeps_largest(CellChoice(), crops, like, scale, tiled=False)
    assert not keeps_largest(CellChoice(), crops, like, scale, tiled=True)  # a tile of a field
    assert not keeps_largest(CellChoice(), crops, field, scale, tiled=False)
    for other in (None, False):  # not recorded, or trained on images of several cells
        assert not keeps_largest(CellChoice(), ModelConfig(single_cell=other), like, scale, tiled=False)
    # asked for, either way, it holds everywhere
    assert keeps_largest(CellChoice(largest=True), ModelConfig(), field, scale, tiled=True)
    assert not keeps_largest(CellChoice(largest=False), crops, like, scale, tiled=False)


def test_a_choice_is_checked_and_overridden_only_by_what_is_given():
    choice = CellChoice(score_threshold=0.2, largest=False)
    assert choice.replace(score_threshold=None, largest=None, max_cells=3) == CellChoice(0.2, False, 3)
    assert CellChoice(**choice.as_kwargs()) == choice
    for bad, match in (({"score_threshold": 1.0}, "score_threshold=1.0"), ({"score_threshold": "high"}, "score threshold"),
                       ({"max_cells": 0}, "max_cells"), ({"max_cells": 2.5}, "max_cells"), ({"largest": "yes"}, "largest")):
        with pytest.raises(ValueError, match=match):
            CellChoice(**bad)


def test_border_labels():
    cells = np.zeros((5, 5), int)
    cells[0, 1], cells[2, 2], cells[4, 4] = 1, 2, 3
    assert border_labels(cells).tolist() == [0, 1, 3]
