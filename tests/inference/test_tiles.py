"""Tile grid and stitching, fed with the true labels each tile sees (no model: the rule itself is tested)."""

import numpy as np
import pytest
from skimage.draw import disk
from skimage.measure import label as connected

from cellrcnn.inference.tiles import Stitcher, Tile, grid_overlap, tile_grid


def discs(shape, centres, radius, rng=None):
    cells = np.zeros(shape, dtype=np.int32)
    parts = np.zeros(shape, dtype=np.uint8)
    for i, (y, x) in enumerate(centres, start=1):
        r = radius if np.isscalar(radius) else radius[i - 1]
        rr, cc = disk((y, x), r, shape=shape)
        free = cells[rr, cc] == 0
        cells[rr[free], cc[free]] = i
        parts[rr[free], cc[free]] = 1
        rr, cc = disk((y, x), r / 2, shape=shape)
        parts[rr, cc] = np.where(cells[rr, cc] == i, 2, parts[rr, cc])
    return cells, parts


def tile_view(cells, parts, tile):
    """What a perfect model returns for a tile: the visible pieces of the cells, numbered 1..n."""
    window = cells[tile.y0:tile.y1, tile.x0:tile.x1]
    ids = np.unique(window[window > 0])
    lut = np.zeros(cells.max() + 1, dtype=np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[window], parts[tile.y0:tile.y1, tile.x0:tile.x1], np.linspace(0.99, 0.6, len(ids)), np.ones(len(ids))


def stitch(cells, parts, tile, overlap, order=None):
    stitcher = Stitcher(cells.shape)
    tiles = tile_grid(cells.shape, tile, overlap)
    for t in (tiles if order is None else [tiles[i] for i in order]):
        stitcher.add(t, *tile_view(cells, parts, t))
    return stitcher.finish()


def same_partition(a, b):
    """Two label images that name the same cells with the same pixels, up to the numbering."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1])))


def test_grid_covers_the_field_with_full_tiles_and_the_overlap():
    tiles = tile_grid((1000, 700), 256, 32)
    covered = np.zeros((1000, 700), dtype=int)
    for t in tiles:
        covered[t.y0:t.y1, t.x0:t.x1] += 1
    assert covered.min() >= 1
    assert len({t.shape for t in tiles}) == 1 and max(tiles[0].shape) <= 256
    xs, side = sorted({t.x0 for t in tiles}), tiles[0].shape[1]
    assert all(b - a <= side - 32 for a, b in zip(xs, xs[1:])) and xs[-1] + side == 700
    assert len(tiles) == 5 * 3  # the fewest that cover it
    # 2048 px in tiles of at most 1024 overlapping by 128: three of 768, not a third tile of 1024 mostly repeated
    assert {t.shape for t in tile_grid((2048, 2048), 1024, 128)} == {(768, 768)}
    assert tile_grid((100, 120), 256, 32) == [Tile(0, 100, 0, 120)]
    with pytest.raises(ValueError, match="overlap"):
        tile_grid((100, 100), 64, 40)


@pytest.mark.parametrize("radius", [10, 40])  # smaller than the overlap, and wider than it
def test_stitched_field_has_every_cell_once_and_whole(radius, rng):
    shape = (700, 900)
    centres = [(y, x) for y in range(30, 700, 95) for x in range(30, 900, 95)]
    cells, parts = discs(shape, centres, radius)
    field = stitch(cells, parts, tile=200, overlap=32)
    assert same_partition(field["cells"], cells)
    assert field["cells"].max() == len(centres)
    assert np.array_equal(field["parts"], parts)


def test_cell_on_a_tile_boundary_gets_one_label_in_any_tile_order():
    shape = (512, 512)
    tiles = tile_grid(shape, 256, 32)
    boundary = tiles[1].x0  # the second tile's left edge runs through this column
    cells, parts = discs(shape, [(256, boundary), (boundary, 256), (tiles[0].y1, tiles[0].x1)], 20)
    for order in (None, list(reversed(range(len(tiles))))):
        field = stitch(cells, parts, tile=256, overlap=32, order=order)
        assert field["cells"].max() == 3
        assert same_partition(field["cells"], cells)
        for label in range(1, 4):
            assert connected(field["cells"] == label).max() == 1


def test_complete_view_farthest_from_an_edge_wins_over_a_cut_view():
    shape = (300, 300)
    cells, parts = discs(shape, [(150, 140)], 30)
    stitcher = Stitcher(shape)
    left, right = Tile(0, 300, 0, 175), Tile(0, 300, 125, 300)
    right_view = tile_view(cells, parts, right)  # cut: the cell crosses the right tile's left edge
    stitcher.add(right, right_view[0], right_view[1], [0.99], [1])
    stitcher.add(left, *tile_view(cells, parts, left))
    field = stitcher.finish()
    assert np.array_equal(field["cells"] > 0, cells > 0) and field["cells"].max() == 1


def test_piece_that_stops_short_of_its_tile_edge_is_still_cut():
    # A model's mask of a cell cut by a tile edge often stops a few pixels short of that edge. Without a
    # margin the corner piece looks complete and replaces the whole cell; with it the pieces are merged.
    shape = (300, 300)
    cells, parts = discs(shape, [(150, 150)], 45)  # 90 px across, the overlap is 40: no tile sees it whole
    tiles = tile_grid(shape, 170, 40)
    assert len(tiles) == 4 and all((cells[t.y0:t.y1, t.x0:t.x1] > 0).sum() < (cells > 0).sum() for t in tiles)

    def run(edge):
        stitcher = Stitcher(shape, edge=edge)
        for t in tiles:
            view_cells, view_parts, scores, classes = tile_view(cells, parts, t)
            inner = np.zeros(t.shape, dtype=bool)  # 3 px short of every inner edge, as a model draws it
            inner[3 if t.y0 else 0:t.shape[0] - (3 if t.y1 < 300 else 0),
                  3 if t.x0 else 0:t.shape[1] - (3 if t.x1 < 300 else 0)] = True
            stitcher.add(t, view_cells * inner, view_parts * inner, scores, classes)
        return stitcher.finish()

    whole, short = run(edge=4), run(edge=0)
    assert whole["cells"].max() == 1 and (whole["cells"] > 0).sum() >= 0.95 * (cells > 0).sum()
    assert (short["cells"] > 0).sum() < 0.6 * (cells > 0).sum()  # without it, pieces replace the cell
    with pytest.raises(ValueError, match="edge"):
        Stitcher(shape, edge=-1)


def test_different_cells_that_touch_across_tiles_stay_apart():
    shape = (200, 400)
    cells = np.zeros(shape, dtype=np.int32)
    cells[50:150, 150:200], cells[50:150, 200:250] = 1, 2  # two cells touching at column 200
    parts = (cells > 0).astype(np.uint8)
    field = stitch(cells, parts, tile=220, overlap=40)
    assert same_partition(field["cells"], cells) and field["cells"].max() == 2


def test_labels_follow_descending_score():
    shape = (100, 100)
    cells, parts = discs(shape, [(30, 30), (70, 70)], 10)
    stitcher = Stitcher(shape)
    stitcher.add(Tile(0, 100, 0, 100), cells, parts, [0.6, 0.9], [1, 2])
    field = stitcher.finish()
    assert list(field["scores"]) == [0.9, 0.6] and list(field["classes"]) == [2, 1]
    assert field["cells"][70, 70] == 1 and field["cells"][30, 30] == 2


def test_synthetic_cell_exactly_on_a_tile_boundary_gets_one_label():
    from cellrcnn.sample_data.field import synthetic_field

    shape, tile, overlap = (600, 600), 256, 48
    tiles = tile_grid(shape, tile, overlap)
    edge = float(tiles[0].x1) - 0.5  # the last column of the first tile ends here: the cell straddles it
    field = synthetic_field(shape, seed=3, cell_diameter=40, centres=[(300, edge), (edge, edge)], diameters=70)
    assert field["cells"][300, int(edge)] == 1 and field["cells"][300, int(edge) + 1] == 1
    stitched = stitch(field["cells"].astype(np.int64), field["parts"], tile, overlap)
    for placed in (1, 2):
        labels = np.unique(stitched["cells"][field["cells"] == placed])
        assert len(labels) == 1 and labels[0] > 0
        assert connected(stitched["cells"] == labels[0]).max() == 1
    assert same_partition(stitched["cells"], field["cells"])


def test_view_near_an_inner_edge_needs_the_neighbouring_tile_to_confirm_it():
    # A model fires on the cut edge of a tile; the neighbouring tile sees that spot far from its own edges.
    shape = (200, 300)
    cells, parts = discs(shape, [(100, 150)], 12)  # a real cell in the middle of the overlap (130-170)
    artefact = np.zeros(shape, dtype=np.int32)
    artefact[90:110, 160:168] = 1  # only the left tile "sees" this, at its right edge
    left, right = Tile(0, 200, 0, 170), Tile(0, 200, 130, 300)
    for core, kept in ((20, 1), (0, 2)):
        stitcher = Stitcher(shape, core=core)
        stitcher.add(left, *tile_view(cells, parts, left))
        stitcher.add(right, *tile_view(cells, parts, right))
        stitcher.add(left, artefact[:, :170], (artefact[:, :170] > 0).astype(np.uint8), [0.7], [1])
        field = stitcher.finish()
        assert field["cells"].max() == kept and field["cells"][100, 150] > 0
        assert (field["parts"] > 0).sum() == (field["cells"] > 0).sum()  # a dropped view leaves no parts
    assert grid_overlap(tile_grid((600, 600), 256, 48)) >= 48 and grid_overlap([Tile(0, 9, 0, 9)]) == 0


def test_a_dropped_edge_artefact_leaves_no_hole_in_the_cell_it_touched():
    shape = (200, 300)
    cells, parts = discs(shape, [(100, 160)], 25)  # whole in the right tile, cut by the left tile's edge
    artefact = np.zeros((200, 170), dtype=np.int32)
    artefact[20:140, 162:170] = 1  # the left tile fires along its right edge, over a strip of the cell
    assert 0 < ((artefact > 0) & (cells[:, :170] > 0)).sum() < 0.5 * (cells > 0).sum()
    left, right = Tile(0, 200, 0, 170), Tile(0, 200, 130, 300)
    stitcher = Stitcher(shape, core=20)
    stitcher.add(left, artefact, (artefact > 0).astype(np.uint8), [0.8], [1])  # laid down first
    stitcher.add(right, *tile_view(cells, parts, right))
    field = stitcher.finish()
    assert field["cells"].max() == 1 and np.array_equal(field["cells"] > 0, cells > 0)
    assert np.array_equal(field["parts"], parts)
