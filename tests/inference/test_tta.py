"""Test-time augmentation: the views of an image and their merge per cell (pure), and the predictor's use."""

import numpy as np
import pytest
from conftest import SAMPLE

from cellrcnn.inference.predictor import Predictor
from cellrcnn.inference.tta import VIEWS, from_view, merge_views, to_view


def test_every_view_goes_back_to_the_image():
    image = np.arange(5 * 7 * 3).reshape(5, 7, 3)
    seen = set()
    for view in VIEWS:
        shown = to_view(image, view)
        assert shown.shape in ((5, 7, 3), (7, 5, 3))
        np.testing.assert_array_equal(from_view(shown, view), image)
        np.testing.assert_array_equal(from_view(to_view(image[..., 0], view), view), image[..., 0])
        seen.add(shown.tobytes() + bytes(shown.shape))
    assert len(seen) == 8  # the 8 views differ


def label_view(cells, parts, scores, classes=None):
    return {"cells": cells, "parts": parts, "scores": np.asarray(scores, float),
            "classes": np.ones(len(scores), np.int64) if classes is None else np.asarray(classes)}


def test_a_cell_found_in_most_views_is_kept_with_its_majority_pixels_and_parts():
    cells = np.zeros((20, 20), np.uint16)
    cells[2:10, 2:10] = 1
    cells[12:18, 11:19] = 2
    parts = np.where(cells > 0, 1, 0).astype(np.uint8)
    parts[4:7, 4:7] = 2  # cell 1's nucleus
    views = []
    for i in range(8):
        c, p = cells.copy(), parts.copy()
        if i < 3:  # three views see cell 1 one column wider and call its nucleus larger: outvoted
            c[2:10, 10] = 1
            p[2:10, 10] = 1
            p[4:8, 4:8] = 2
        scores = [0.9 - 0.01 * i, 0.6]
        if i == 0:  # one view finds a third cell: too few views agree
            c[0:2, 15:20] = 3
            p[0:2, 15:20] = 1
            scores.append(0.99)
        views.append(label_view(c, p, scores))
    merged = merge_views(views)
    np.testing.assert_array_equal(merged["cells"], cells)
    np.testing.assert_array_equal(merged["parts"], parts)
    assert merged["scores"] == pytest.approx([np.mean([0.9 - 0.01 * i for i in range(8)]), 0.6])
    assert merged["areas"].tolist() == [64, 48] and merged["classes"].tolist() == [1, 1]


def test_two_cells_claiming_a_pixel_give_it_to_the_better_scoring_one():
    a = np.zeros((10, 10), np.uint16)
    a[1:6, 1:6] = 1
    a[4:9, 4:9] = 2  # label images hold one cell a pixel: here 2 over 1 where they meet...
    parts = (a > 0).astype(np.uint8)
    merged = merge_views([label_view(a, parts, [0.5, 0.8])] * 2)  # ...but cell 2 scores better
    assert merged["scores"].tolist() == [0.8, 0.5]
    assert merged["cells"][4, 4] == 1 and merged["areas"].tolist() == [25, 21]  # cell 2 is label 1 now
    with pytest.raises(ValueError, match="at least one view"):
        merge_views([])


def test_the_predictor_with_tta_gives_consistent_labels_and_a_table(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    plain = predictor.predict(SAMPLE / "images" / "sample_00.png")
    predictor.tta = True
    merged = predictor.predict(SAMPLE / "images" / "sample_00.png")
    assert merged.cells.shape == plain.cells.shape
    np.testing.assert_array_equal(merged.cells > 0, merged.parts > 0)
    assert len(merged.table) == merged.cells.max() and len(merged.table) >= 1
    # a cell the model finds in every view is found with TTA too: the best cell of the plain prediction
    best = plain.cells == 1
    overlap = np.bincount(merged.cells[best], minlength=merged.cells.max() + 1)[1:]
    assert overlap.max() >= 0.5 * best.sum()
