"""Whole-cell targets from hand-made label maps."""

import numpy as np
import pytest

from cellrcnn.data.targets import instance_targets, parts_from_instances, select_largest, whole_cell_targets


def cell(shape, r0, c0, r1, c1, value=1):
    out = np.zeros(shape, dtype=np.int64)
    out[r0:r1, c0:c1] = value
    return out


def test_part_map_gives_one_box_per_connected_cell_with_its_parts():
    parts = np.zeros((20, 30), dtype=np.uint8)
    parts[2:8, 3:10] = 1
    parts[4:6, 5:7] = 2
    parts[12:18, 20:28] = 1
    t = whole_cell_targets(parts)
    assert t["boxes"].tolist() == [[3, 2, 10, 8], [20, 12, 28, 18]]
    assert t["boxes"].dtype == np.float32 and t["labels"].dtype == np.int64 and t["masks"].dtype == np.uint8
    assert t["labels"].tolist() == [1, 1] and t["masks"].shape == (2, 20, 30)
    np.testing.assert_array_equal(t["masks"][0][2:8, 3:10], parts[2:8, 3:10])
    assert t["masks"][0][12:18, 20:28].max() == 0  # the other cell is not in this mask


def test_touching_cells_need_an_instance_map():
    cells = cell((10, 20), 2, 2, 8, 10, 1) + cell((10, 20), 2, 10, 8, 18, 2)
    parts = (cells > 0).astype(np.uint8)
    parts[4:6, 4:6] = 2
    assert len(whole_cell_targets(parts)["boxes"]) == 1  # merged
    t = instance_targets(cells, parts)
    assert t["boxes"].tolist() == [[2, 2, 10, 8], [10, 2, 18, 8]]
    assert (t["masks"][0] == 2).sum() == 4 and (t["masks"][1] == 2).sum() == 0


def test_instance_pixels_the_part_map_calls_background_count_as_cytoplasm():
    cells = cell((6, 6), 1, 1, 5, 5)
    parts = np.zeros((6, 6), dtype=np.uint8)
    parts[2:4, 2:4] = 2
    mask = instance_targets(cells, parts)["masks"][0]
    assert (mask == 1).sum() == 12 and (mask == 2).sum() == 4


def test_cells_and_nuclei_instances_give_cytoplasm_as_cell_minus_nucleus():
    cells = cell((8, 8), 1, 1, 7, 7)
    nuclei = cell((8, 8), 3, 3, 5, 5, 9) + cell((8, 8), 0, 7, 1, 8, 4)  # second nucleus lies outside any cell
    parts = parts_from_instances(cells, nuclei)
    assert (parts == 2).sum() == 4 and (parts == 1).sum() == 32 and parts[0, 7] == 0


def test_small_cells_are_dropped_and_an_empty_image_is_a_negative_sample():
    parts = np.zeros((10, 10), dtype=np.uint8)
    parts[0:2, 0:2] = 1
    t = whole_cell_targets(parts, min_area=5)
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 10, 10) and t["labels"].shape == (0,)
    assert len(whole_cell_targets(np.zeros((4, 4), dtype=np.uint8))["boxes"]) == 0


def test_largest_keeps_the_largest_cell_off_the_border():
    shape = (40, 40)
    cells = cell(shape, 0, 0, 20, 20, 1) + cell(shape, 25, 25, 35, 35, 2) + cell(shape, 22, 2, 30, 10, 3)
    t = select_largest(instance_targets(cells, (cells > 0).astype(np.uint8)))
    assert t["boxes"].tolist() == [[25, 25, 35, 35]]  # the 20x20 cell is larger but cut by the border
    assert t["masks"].shape == (1, 40, 40)


def test_largest_falls_back_to_the_largest_cell_when_all_touch_the_border():
    shape = (30, 30)
    cells = cell(shape, 0, 0, 10, 10, 1) + cell(shape, 15, 10, 30, 30, 2)
    t = select_largest(instance_targets(cells, (cells > 0).astype(np.uint8)))
    assert t["boxes"].tolist() == [[10, 15, 30, 30]]


def test_largest_of_no_cells_is_no_cell():
    t = select_largest(whole_cell_targets(np.zeros((5, 5), dtype=np.uint8)))
    assert len(t["boxes"]) == 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one shape"):
        instance_targets(np.zeros((4, 4), int), np.zeros((4, 5), int))


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2


def test_tie_parts_gives_each_cell_its_own_nucleus_first():
    from cellrcnn.data.targets import tie_parts
    shape = (40, 60)
    a, b = _disk(shape, 20, 20, 14), _disk(shape, 20, 36, 14)  # overlapping cells
    under = _disk(shape, 20, 28, 3)  # inside both, nearer neither centre by much: B's, as A has its own
    own_a, extra_b = _disk(shape, 20, 12, 3), _disk(shape, 12, 42, 2)  # B has a second nucleus
    stray = _disk(shape, 37, 57, 2)  # in no cell
    parts = np.stack([under, own_a, extra_b, stray])
    assert tie_parts(np.stack([a, b]), parts).tolist() == [1, 0, 1, -1]
    # one cell and a nucleus fully inside it and another: the nearer centre wins the first place, the other follows
    assert tie_parts(np.stack([a]), np.stack([_disk(shape, 20, 28, 3), _disk(shape, 20, 21, 3)])).tolist() == [0, 0]
    # two equal cells (the same mask) and one nucleus: tied once, to one of them
    assert tie_parts(np.stack([a, a]), np.stack([own_a])).tolist() in ([0], [1])
    assert tie_parts(np.zeros((0, *shape), bool), parts).tolist() == [-1] * 4
    # half inside is enough; less is not
    edge = _disk(shape, 20, 34, 3)
    assert tie_parts(np.stack([a]), np.stack([edge])).tolist() == [0 if (edge & a).sum() >= 0.5 * edge.sum() else -1]


def test_overlapping_targets_keep_each_cells_whole_map():
    from cellrcnn.data.targets import cell_part_maps, overlapping_targets
    shape = (40, 60)
    a, b, tiny = _disk(shape, 20, 20, 14), _disk(shape, 20, 36, 14), _disk(shape, 2, 2, 2)
    maps = cell_part_maps(np.stack([a, b, tiny]), {2: np.stack([_disk(shape, 20, 28, 3)])}, {2: np.array([1])})
    target = overlapping_targets(maps, min_area=20, label=np.array([1, 2, 1]))
    assert target["masks"].shape == (2, *shape) and target["labels"].tolist() == [1, 2]
    assert np.array_equal(target["masks"][0] > 0, a) and np.array_equal(target["masks"][1] > 0, b)
    assert (target["masks"][0][_disk(shape, 20, 28, 3)] == 1).all()  # B's nucleus is A's cytoplasm
    assert (target["masks"][1][_disk(shape, 20, 28, 3)] == 2).all()
    assert target["boxes"].tolist() == [[7, 7, 34, 34], [23, 7, 50, 34]]
    assert target["boxes"].dtype == np.float32 and target["labels"].dtype == np.int64
    empty = overlapping_targets(np.zeros((0, *shape), np.uint8))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, *shape)
