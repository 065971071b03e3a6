"""The one rule for the cells a prediction keeps: pure functions, no model."""

import numpy as np
import pytest

from cellrcnn import ModelConfig
from cellrcnn.inference.selection import (CROP_LIKE, CROP_PIXELS, CellChoice, border_labels, cell_boxes, cell_sides,
                                          keeps_largest, kept_cells, looks_like_training_crops, nucleated)

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
    field = (int(CROP_PIXELS * 128) + 1, 100)
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


#: Training crops of 128 network pixels whose cells span 64: two cells across (a crop-like image spans at most 5).
CROPS = ModelConfig(min_size=128, max_size=128, single_cell=True, cell_size=64.0)
ACROSS = CROP_LIKE * 2


def judged(shape, boxes, scale=1.0, nucleus=None):
    """True (a crop) or False (a field), by the cells of ``boxes`` ((x0, y0, x1, y1) each) in an image of ``shape``,
    those with a nucleus marked in ``nucleus`` (None: the model predicts no nucleus)."""
    return looks_like_training_crops(CROPS, shape, scale, cell_sides(np.array(boxes, float), shape), nucleus)


def test_cell_sides_measure_a_cell_cut_by_the_edge_by_its_longer_side():
    cells = np.zeros((120, 120), int)
    cells[20:90, 0:50] = 1  # a round cell 70 px across, cut by the left edge
    cells[40:70, 50:80] = 2  # a complete 30 x 30 cell
    boxes = cell_boxes(cells, 3)
    assert boxes[:2].tolist() == [[0, 20, 50, 90], [50, 40, 80, 70]] and np.isnan(boxes[2]).all()  # 3: no pixel
    sides = cell_sides(boxes, cells.shape)
    assert sides[:2].tolist() == [70.0, 30.0] and np.isnan(sides[2])


def test_a_crop_stays_a_crop_when_its_cell_touches_the_edge_or_a_tiny_false_cell_is_found():
    # issue 44: the real cell cut by the edge, and a 13-px false detection the only complete cell; issue 39's rule
    # counted the image in that detection (120 / 13 = 9 cells across) and judged it a field
    assert judged((120, 120), [(0, 20, 50, 90), (60, 60, 73, 73)])
    assert judged((120, 120), [(30, 30, 90, 90), (100, 5, 108, 13)])  # a complete cell and a tiny false one
    assert judged((120, 120), [(30, 30, 90, 90), (100, 5, 108, 13)], scale=10.0)  # whatever the resize factor
    assert judged((120, 120), [(0, 0, 40, 40), (60, 60, 73, 73)])  # cut at a corner: the longer side still counts
    # the margin: the cut cell (70 px whole) may shrink to 24 px, a fifth of the crop, before the judgement turns
    assert 120 / 24 == ACROSS and judged((120, 120), [(0, 20, 24, 44), (60, 60, 73, 73)])
    assert not judged((120, 120), [(0, 20, 23, 43), (60, 60, 73, 73)])
    assert judged((120, 120), [(5, 5, 55, 55), (65, 5, 115, 55), (5, 65, 55, 115), (65, 65, 115, 115)])  # 4 large


def test_a_mosaic_of_crops_and_a_field_of_small_cells_are_fields():
    # nine crops like the training crops side by side (cells half a 120-px crop): six cells across, more than 5;
    # the mosaic stays a field until its cells grow by a fifth
    mosaic = [(x * 120 + 30, y * 120 + 30, x * 120 + 90, y * 120 + 90) for y in range(3) for x in range(3)]
    assert not judged((360, 360), mosaic) and not judged((360, 360), [(0, 0, 71, 71)] + mosaic)
    # a field of small cells: 25 of 20 px in 512 px; a larger false detection does not make it a crop
    field = [(x * 100 + 10, y * 100 + 10, x * 100 + 30, y * 100 + 30) for y in range(5) for x in range(5)]
    assert not judged((512, 512), field) and not judged((512, 512), [*field, (200, 200, 260, 260)])


def test_only_cells_with_a_nucleus_count_when_the_model_finds_one():
    # a field whose largest detection is a ring of red cells without a nucleus: its white cells decide
    field = [(0, 0, 250, 250), *[(x, 400, x + 40, 440) for x in range(0, 800, 100)]]
    assert judged((800, 800), field) and not judged((800, 800), field, nucleus=np.array([False] + [True] * 8))
    assert judged((800, 800), field, nucleus=np.zeros(9, bool))  # none has one: every cell counts
    # a crop whose white cell has a nucleus and the red cells around it none: the white cell decides
    crop = [(100, 100, 200, 200), *[(x, 10, x + 55, 65) for x in (0, 60, 120, 180, 240)]]
    assert judged((300, 300), crop, nucleus=np.array([True] + [False] * 5))


def test_with_no_cell_found_the_image_is_judged_by_its_size_for_the_network():
    assert judged((120, 120), []) and not judged((800, 800), []) and judged((800, 800), [], scale=0.2)
    # one cell is enough: it decides, whatever the resize factor (issue 39: the auto scale may be far off)
    assert judged((800, 800), [(0, 0, 400, 400)], scale=5.0) and not judged((800, 800), [(0, 0, 40, 40)], scale=0.1)


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
