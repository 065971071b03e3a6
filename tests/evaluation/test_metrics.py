"""Metrics on hand-made label images with known answers."""

import numpy as np
import pytest

from cellrcnn.evaluation.metrics import assign, coco_mask_ap, dice, iou_matrix, matching, part_dice


def square(shape, r0, c0, size, value=1):
    out = np.zeros(shape, dtype=np.int64)
    out[r0:r0 + size, c0:c0 + size] = value
    return out


def test_dice_known_values():
    a = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b = np.zeros((4, 4), bool)
    b[1:3] = True  # 8 pixels, 4 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0 and dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert dice(a, np.zeros((4, 4))) == 0.0


def test_part_dice_per_part_and_whole_cell():
    truth = np.zeros((4, 4), int)
    truth[:, :2], truth[:, 2:] = 1, 2
    pred = truth.copy()
    pred[0, 2] = 1  # one nucleus pixel called cytoplasm
    scores = part_dice(pred, truth, ("background", "cytoplasm", "nucleus"))
    assert scores["cytoplasm_dice"] == pytest.approx(16 / 17)
    assert scores["nucleus_dice"] == pytest.approx(14 / 15)
    assert scores["cell_dice"] == 1.0
    assert scores["part_dice"] == pytest.approx((16 / 17 + 14 / 15) / 2)


def test_iou_matrix_of_overlapping_squares():
    truth = square((10, 10), 0, 0, 4, 1) + square((10, 10), 6, 6, 4, 2)
    pred = square((10, 10), 0, 2, 4, 5)  # overlaps cell 1 by 8 of 24 pixels
    iou = iou_matrix(truth, pred)
    assert iou.shape == (2, 1)
    assert iou[0, 0] == pytest.approx(8 / 24) and iou[1, 0] == 0


def test_matching_counts_and_panoptic_quality():
    shape = (20, 20)
    truth = square(shape, 0, 0, 4, 1) + square(shape, 10, 10, 4, 2) + square(shape, 15, 0, 4, 3)
    # cell 1 exact, cell 2 shifted by one row (IoU 12/20 = 0.6), cell 3 missed, one false detection
    pred = square(shape, 0, 0, 4, 7) + square(shape, 11, 10, 4, 8) + square(shape, 0, 15, 3, 9)
    table = matching(truth, pred, thresholds=(0.5, 0.7))
    at50, at70 = table.iloc[0], table.iloc[1]
    assert (at50.tp, at50.fp, at50.fn) == (2, 1, 1)
    assert at50.precision == pytest.approx(2 / 3) and at50.recall == pytest.approx(2 / 3)
    assert at50.f1 == pytest.approx(2 / 3)
    assert at50.pq == pytest.approx((1.0 + 0.6) / (2 + 0.5 + 0.5))
    assert (at70.tp, at70.fp, at70.fn) == (1, 2, 2) and at70.pq == pytest.approx(1.0 / 3)


def test_assignment_maximises_matches_at_the_threshold_not_total_iou():
    # Pairing by total IoU would take the two 0.55 cross pairs and match nothing at 0.6.
    iou = np.array([[0.9, 0.55], [0.55, 0.1]])
    rows, cols = assign(iou, 0.6)
    assert list(zip(rows, cols)) == [(0, 0)]
    rows, cols = assign(iou, 0.5)
    assert sorted(zip(rows, cols)) == [(0, 1), (1, 0)]  # two matches beat one


def test_each_prediction_matches_at_most_one_cell():
    truth = np.zeros((1, 12), int)
    truth[0, 0:6], truth[0, 6:12] = 1, 2
    pred = np.ones((1, 12), int)  # one prediction covering both cells: IoU 0.5 with each
    row = matching(truth, pred, thresholds=(0.5,)).iloc[0]
    assert (row.tp, row.fp, row.fn) == (1, 0, 1)


def test_matching_empty_images():
    empty = np.zeros((5, 5), int)
    assert matching(empty, empty, (0.5,)).iloc[0][["precision", "recall", "f1", "pq"]].tolist() == [1, 1, 1, 1]
    one = square((5, 5), 0, 0, 2)
    row = matching(one, empty, (0.5,)).iloc[0]
    assert (row.tp, row.fn, row.recall, row.pq) == (0, 1, 0.0, 0.0)


def two_cells():
    truth = square((32, 32), 2, 2, 10, 1) + square((32, 32), 18, 18, 10, 2)
    return truth


def test_coco_ap_of_perfect_predictions_is_one():
    truth = two_cells()
    pred = truth * 3  # other label ids, same masks
    scores = coco_mask_ap([truth], [pred])
    assert scores == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_coco_ap_with_half_the_cells_found():
    truth = two_cells()
    pred = square((32, 32), 2, 2, 10, 1)  # recall stops at 0.5: precision 1 on 51 of 101 recall points
    assert coco_mask_ap([truth], [pred])["AP"] == pytest.approx(51 / 101, abs=1e-6)


def test_coco_ap_ranks_by_score():
    truth = two_cells()
    pred = truth.copy()
    pred[0:4, 24:28] = 3  # a false positive
    low = coco_mask_ap([truth], [pred], [{1: 0.9, 2: 0.8, 3: 0.1}])["AP50"]
    high = coco_mask_ap([truth], [pred], [{1: 0.9, 2: 0.8, 3: 0.95}])["AP50"]
    assert low == pytest.approx(1.0) and high < 0.9


def _disks(shape, *circles):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2 for cy, cx, r in circles]) if circles else \
        np.zeros((0, *shape), bool)


def test_isbi_measures_on_overlapping_cells_by_hand():
    from cellrcnn.evaluation.metrics import isbi_cells, isbi_summary
    shape = (60, 80)
    truth = _disks(shape, (30, 25, 15), (30, 45, 15), (10, 70, 6))  # two overlapping cells and a small one
    # the first found exactly, the second shifted by 3 px (still good), the small one missed; one false cell
    pred = _disks(shape, (30, 25, 15), (30, 48, 15), (55, 5, 4))
    cells = isbi_cells(truth, pred)
    assert cells["dice"].iloc[0] == 1.0 and cells["good"].tolist() == [True, True, False]
    inter = (truth[1] & pred[1]).sum()
    assert cells["dice"].iloc[1] == pytest.approx(2 * inter / (truth[1].sum() + pred[1].sum()))
    assert cells["tpp"].iloc[1] == pytest.approx(inter / truth[1].sum())
    assert cells["fpp"].iloc[1] == pytest.approx((pred[1] & ~truth[1]).sum() / (truth[1].size - truth[1].sum()))
    summary = isbi_summary(cells)
    assert summary["fno"] == pytest.approx(1 / 3) and summary["dice"] == pytest.approx(cells["dice"][:2].mean())
    assert summary["tpp"] == pytest.approx((1 + cells["tpp"].iloc[1]) / 2)
    # the overlap counts for both cells: a prediction that gives it to one cell only loses Dice on the other
    cut = pred[:2].copy()
    cut[1] &= ~truth[0]
    assert isbi_cells(truth[:2], cut)["dice"].iloc[1] < cells["dice"].iloc[1]
    missed = isbi_cells(truth, _disks(shape))
    assert not missed["good"].any() and isbi_summary(missed)["fno"] == 1.0


def test_nucleus_detection_needs_sixty_percent_both_ways():
    from cellrcnn.evaluation.metrics import nucleus_detection
    shape = (40, 40)
    truth = _disks(shape, (10, 10, 5), (30, 30, 5))
    pred = _disks(shape, (10, 11, 5), (30, 30, 12))  # the second is far too large: its overlap/|P| < 0.6
    found = nucleus_detection(truth, pred)
    assert (found["tp"], found["precision"], found["recall"]) == (1, 0.5, 0.5) and found["f1"] == 0.5
    assert nucleus_detection(truth, truth)["f1"] == 1.0
    assert nucleus_detection(truth, _disks(shape))["recall"] == 0.0


def test_edge_band_dice_puts_an_edge_error_in_the_band_and_a_nucleus_error_inside():
    from cellrcnn.evaluation.metrics import edge_band_dice

    parts = ("background", "cytoplasm", "nucleus")
    truth = np.zeros((40, 40), np.uint8)
    truth[5:35, 5:35] = 1
    truth[15:25, 15:25] = 2
    assert edge_band_dice(truth, truth, parts)["cytoplasm_dice_band"] == 1.0
    grown = truth.copy()
    grown[3:37, 3:37][grown[3:37, 3:37] == 0] = 1  # the cell drawn 2 px too wide: all of it in the band
    scores = edge_band_dice(grown, truth, parts)
    assert scores["cell_dice_band"] < 0.9 and scores["cell_dice_interior"] == 1.0
    assert scores["cytoplasm_dice_interior"] == 1.0 and scores["nucleus_dice_interior"] == 1.0
    # the band: 3 px on each side of the 30-px square's edge, its outer corners rounded (Euclidean distance)
    assert scores["interior_pixels"] == 24 ** 2 and 30 ** 2 - 24 ** 2 < scores["band_pixels"] < 36 ** 2 - 24 ** 2
    moved = truth.copy()
    moved[15:25, 15:25] = 1
    moved[17:27, 17:27] = 2  # the nucleus shifted 2 px, far from the edge
    scores = edge_band_dice(moved, truth, parts)
    assert scores["nucleus_dice_interior"] == pytest.approx(2 * 64 / 200)
    assert scores["cell_dice_band"] == 1.0 and scores["nucleus_dice_band"] == 1.0
