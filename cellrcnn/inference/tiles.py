"""Whole fields of view in tiles: the tile grid, and tile label images stitched into one field.

The rule, for a cell seen by several overlapping tiles:

1. A view of a cell is *complete* in its tile when it keeps more than ``edge``
   pixels from every inner tile edge (an edge that is not the field's border);
   otherwise it is *cut*. The margin matters: a predicted mask rarely reaches
   the exact edge of its tile (the mask head draws 28 x 28 cells per box), and
   a cut view mistaken for a complete one would replace the whole cell by its
   piece, while a complete view mistaken for a cut one is only merged with the
   other views of its cell.
2. Two views from different tiles are the same cell when, inside the area both
   tiles saw, their intersection covers at least ``match`` (half) of the
   smaller one. (Not IoU over the whole masks: a cut view is only part of its
   cell, and cells merged from cut views are only partly seen by a new tile.)
3. Of two views of one cell a complete view beats a cut one, and of two
   complete views the one farther from its tile's inner edges wins, provided
   the winner covers at least half of the view it replaces (so a small false
   detection inside a cell never replaces the cell). Two cut views (a cell
   wider than the overlap, which no tile sees whole) are merged into one cell.
4. Views that match nothing are new cells; where two cells claim a pixel, the
   one laid down first keeps it (unless it is an unconfirmed view, rule 5).
5. A view whose centre lies within ``core`` pixels of an inner tile edge (half
   the overlap) sits where the neighbouring tile sees farther from its own
   edges. It is kept only when a view from another tile confirms it (matches
   it, whichever wins); alone, it is an artefact of the tile edge (a model
   fires on the cut edges of a tile) and is dropped. Until confirmed it holds
   no pixel against another view, so dropping it leaves no hole in a cell.

Tiles are added one at a time and only the label images and a few numbers per
cell are kept, so memory is the two label images plus one tile's working set.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from skimage.measure import regionprops

__all__ = ["Tile", "tile_grid", "grid_overlap", "Stitcher", "relabel"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tile:
    """A window ``[y0:y1, x0:x1]`` of a field."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the fewest tiles of at most ``tile`` pixels, overlapping by at least ``overlap``,
    that cover ``length``: all of one size, spread evenly, so no field size wastes a nearly empty last tile."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)
    return [(start, start + size) for start in
            sorted({round(i * (length - size) / (count - 1)) for i in range(count)})]


def tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """Overlapping tiles covering a field of ``shape`` (H, W), row by row.

    Along each side the fewest tiles of at most ``tile`` pixels that overlap
    by at least ``overlap`` are spread evenly, all of one size (a side no longer
    than ``tile`` is one tile), so the pixels predicted twice stay a steady
    fraction of the field whatever its size.

    Raises
    ------
    ValueError
        ``tile`` is not positive or ``overlap`` is not in ``[0, tile / 2]``.
    """
    if tile < 1 or not 0 <= overlap <= tile // 2:
        raise ValueError(f"tile must be positive and overlap between 0 and half the tile; got tile {tile}, "
                         f"overlap {overlap}")
    H, W = shape
    return [Tile(y0, y1, x0, x1) for y0, y1 in _spans(H, tile, overlap) for x0, x1 in _spans(W, tile, overlap)]


def grid_overlap(tiles: list[Tile]) -> int:
    """The smallest overlap in pixels between neighbouring tiles of a :func:`tile_grid` (0 for one tile)."""
    overlaps = []
    for start, end in (("y0", "y1"), ("x0", "x1")):
        spans = sorted({(getattr(t, start), getattr(t, end)) for t in tiles})
        overlaps += [a[1] - b[0] for a, b in zip(spans, spans[1:])]
    return min(overlaps, default=0)


def relabel(cells: np.ndarray, lut: np.ndarray, parts: np.ndarray | None = None, band: int = 512) -> None:
    """Replace each label ``l`` of ``cells`` by ``lut[l]`` in place, band by band (no temporary the size of the
    field); where a cell becomes background, ``parts`` (if given) does too."""
    for y in range(0, cells.shape[0], band):
        cells[y:y + band] = lut[cells[y:y + band]]
        if parts is not None:
            parts[y:y + band] *= cells[y:y + band] > 0


@dataclass
class _Cell:
    """What the stitcher keeps of a cell: where it is, where its view came from, how it was seen."""

    bbox: list[int]  # y0, y1, x0, x1 in the field
    window: list[int]  # the tile (or union of tiles) that saw it
    cut: bool
    margin: float
    score: float
    cls: int
    confirmed: bool = True  # False: near an inner tile edge and not (yet) seen by another tile


class Stitcher:
    """Tile label images stitched into one cell label image and one part label image.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the field.
    match : float
        Overlap (intersection over the smaller, inside the area two tiles share)
        from which two views are one cell.
    edge : int
        A view within this many pixels of an inner tile edge counts as cut
        (:class:`~cellrcnn.inference.predictor.Predictor` uses a few network pixels).
    core : int
        A view whose centre lies within this many pixels of an inner tile edge
        needs a view from another tile to confirm it (rule 5; the predictor
        uses half the overlap). 0: every view stands on its own.

    Examples
    --------
    >>> stitcher = Stitcher((4000, 4000))
    >>> for tile in tile_grid((4000, 4000), 1024, 128):
    ...     stitcher.add(tile, cells, parts, scores, classes)  # cells, parts: the tile's label images
    >>> field = stitcher.finish()
    """

    def __init__(self, shape: tuple[int, int], match: float = 0.5, edge: int = 0, core: int = 0) -> None:
        if edge < 0 or core < 0:
            raise ValueError(f"edge and core must be at least 0 pixels, got {edge} and {core}")
        self.shape = tuple(shape)
        self.match = match
        self.edge = edge
        self.core = core
        self.cells = np.zeros(self.shape, dtype=np.uint16)
        self.parts = np.zeros(self.shape, dtype=np.uint8)
        self._cells: list[_Cell] = []  # label i + 1
        self._pending: set[int] = set()  # labels of views not (yet) confirmed: any other view may take their pixels

    def add(self, tile: Tile, cells: np.ndarray, parts: np.ndarray, scores, classes) -> None:
        """Stitch one tile's labels in.

        Parameters
        ----------
        tile : Tile
            Where the tile lies in the field.
        cells : np.ndarray
            Integer ``[h, w]`` cell labels of the tile, 0 background, label ``i``
            the detection ``i - 1`` of ``scores``.
        parts : np.ndarray
            uint8 ``[h, w]`` part labels.
        scores, classes : sequence
            Detection score and class of each label.
        """
        if cells.shape != tile.shape or parts.shape != tile.shape:
            raise ValueError(f"tile labels of shape {cells.shape} and {parts.shape} do not fit tile {tile}")
        H, W = self.shape
        h, w = tile.shape
        inner = {"top": tile.y0 > 0, "bottom": tile.y1 < H, "left": tile.x0 > 0, "right": tile.x1 < W}
        for region in regionprops(np.asarray(cells, dtype=np.int64)):
            r0, c0, r1, c1 = region.bbox
            gaps = {"top": r0, "bottom": h - r1, "left": c0, "right": w - c1}
            inner_gaps = [gaps[side] for side, is_inner in inner.items() if is_inner]
            margin = float(min(inner_gaps)) if inner_gaps else math.inf
            cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
            centre_gaps = {"top": cy, "bottom": h - cy, "left": cx, "right": w - cx}
            near = any(is_inner and centre_gaps[side] < self.core for side, is_inner in inner.items())
            view = _Cell(bbox=[tile.y0 + r0, tile.y0 + r1, tile.x0 + c0, tile.x0 + c1],
                         window=[tile.y0, tile.y1, tile.x0, tile.x1], cut=margin <= self.edge, margin=margin,
                         score=float(scores[region.label - 1]), cls=int(classes[region.label - 1]),
                         confirmed=not near)
            self._place(view, region.image, parts[r0:r1, c0:c1])

    def _place(self, view: _Cell, mask: np.ndarray, parts: np.ndarray) -> None:
        y0, y1, x0, x1 = view.bbox
        under = self.cells[y0:y1, x0:x1][mask]
        found, counts = np.unique(under[under > 0], return_counts=True)
        matches = []  # (label, whether the view covers at least half of it)
        for label in found[np.argsort(-counts)]:
            inter, ours, theirs = self._shared_overlap(int(label), view, mask)
            if inter >= self.match * max(min(ours, theirs), 1):
                matches.append((int(label), inter >= 0.5 * theirs))
        if not matches:
            self._cells.append(view)
            if not view.confirmed:
                self._pending.add(len(self._cells))
            self._write(len(self._cells), view, mask, parts)
            return
        view.confirmed = True  # another tile saw this cell
        for label, _ in matches:
            self._cells[label - 1].confirmed = True
            self._pending.discard(label)
        if view.cut:  # merged with the cut views of the cell (a complete view, if any, wins)
            pieces = [label for label, _ in matches if self._cells[label - 1].cut]
            if not pieces:
                return
            for label in pieces[1:]:  # this view bridges pieces kept apart so far
                self._absorb(pieces[0], label)
            self._absorb(pieces[0], view)
            self._write(pieces[0], view, mask, parts)
            return
        if any(not self._cells[label - 1].cut and self._cells[label - 1].margin >= view.margin
               for label, _ in matches):
            return  # a complete view farther from its tile's edges is kept
        beaten = [label for label, covers in matches if covers]
        if beaten:  # every cut piece (or nearer-the-edge view) it covers makes way
            for label in beaten:
                self._clear(label)
            self._cells[beaten[0] - 1] = view
            self._write(beaten[0], view, mask, parts)

    def _absorb(self, label: int, other) -> None:
        """Cell ``label`` takes over cut piece ``other`` (a label, or a view about to be written as ``label``)."""
        kept = self._cells[label - 1]
        piece = self._cells[other - 1] if isinstance(other, int) else other
        if isinstance(other, int):
            y0, y1, x0, x1 = piece.bbox
            cells = self.cells[y0:y1, x0:x1]
            cells[cells == other] = label
        kept.bbox = [min(kept.bbox[0], piece.bbox[0]), max(kept.bbox[1], piece.bbox[1]),
                     min(kept.bbox[2], piece.bbox[2]), max(kept.bbox[3], piece.bbox[3])]
        kept.window = [min(kept.window[0], piece.window[0]), max(kept.window[1], piece.window[1]),
                       min(kept.window[2], piece.window[2]), max(kept.window[3], piece.window[3])]
        kept.margin, kept.score = max(kept.margin, piece.margin), max(kept.score, piece.score)

    def _shared_overlap(self, label: int, view: _Cell, mask: np.ndarray) -> tuple[int, int, int]:
        """Pixels of ``view`` and cell ``label`` in common, and of each, inside the area both their tiles saw."""
        kept = self._cells[label - 1]
        wy0, wy1 = max(view.window[0], kept.window[0]), min(view.window[1], kept.window[1])
        wx0, wx1 = max(view.window[2], kept.window[2]), min(view.window[3], kept.window[3])
        y0, y1 = max(wy0, min(view.bbox[0], kept.bbox[0])), min(wy1, max(view.bbox[1], kept.bbox[1]))
        x0, x1 = max(wx0, min(view.bbox[2], kept.bbox[2])), min(wx1, max(view.bbox[3], kept.bbox[3]))
        if y1 <= y0 or x1 <= x0:
            return 0, 0, 0
        ours = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        vy0, vy1, vx0, vx1 = view.bbox
        sy0, sy1, sx0, sx1 = max(y0, vy0), min(y1, vy1), max(x0, vx0), min(x1, vx1)
        if sy1 > sy0 and sx1 > sx0:
            ours[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = mask[sy0 - vy0:sy1 - vy0, sx0 - vx0:sx1 - vx0]
        theirs = self.cells[y0:y1, x0:x1] == label
        return np.count_nonzero(ours & theirs), np.count_nonzero(ours), np.count_nonzero(theirs)

    def _write(self, label: int, view: _Cell, mask: np.ndarray, parts: np.ndarray) -> None:
        if label > np.iinfo(self.cells.dtype).max:
            self.cells = self.cells.astype(np.uint32)  # more cells than uint16 holds: rare, worth one copy
        y0, y1, x0, x1 = view.bbox
        cells = self.cells[y0:y1, x0:x1]
        free = mask & ((cells == 0) | (cells == label))
        if self._pending:  # an unconfirmed view (a likely tile-edge artefact) never holds pixels against another
            held = [k for k in np.unique(cells[mask]).tolist() if k in self._pending and k != label]
            if held:
                free |= mask & np.isin(cells, held)
        cells[free] = label
        self.parts[y0:y1, x0:x1][free] = parts[free]

    def _clear(self, label: int) -> None:
        y0, y1, x0, x1 = self._cells[label - 1].bbox
        cells = self.cells[y0:y1, x0:x1]
        own = cells == label
        cells[own] = 0
        self.parts[y0:y1, x0:x1][own] = 0

    def finish(self, band: int = 512) -> dict:
        """The field's labels, renumbered 1..N by descending score (cells that lost every pixel dropped).

        Returns
        -------
        dict
            ``cells`` uint16 ``[H, W]`` (uint32 beyond 65535 cells), ``parts``
            uint8 ``[H, W]``, ``scores`` float ``[N]`` and ``classes`` int ``[N]``
            of cells 1..N, ``areas`` int ``[N]`` (pixels).
        """
        n = len(self._cells)
        counts = np.zeros(n + 1, dtype=np.int64)
        for y in range(0, self.shape[0], band):  # in bands: no temporary the size of the field
            counts += np.bincount(self.cells[y:y + band].ravel(), minlength=n + 1)
        scores = np.array([c.score for c in self._cells])
        classes = np.array([c.cls for c in self._cells], dtype=np.int64)
        confirmed = np.array([c.confirmed for c in self._cells], dtype=bool)
        alive = np.flatnonzero((counts[1:] > 0) & confirmed)
        order = alive[np.argsort(-scores[alive], kind="stable")]
        lut = np.zeros(n + 1, dtype=self.cells.dtype)
        lut[order + 1] = np.arange(1, len(order) + 1)
        relabel(self.cells, lut, self.parts, band=band)  # unconfirmed views leave no parts behind
        if len(order) <= np.iinfo(np.uint16).max and self.cells.dtype != np.uint16:
            self.cells = self.cells.astype(np.uint16)
        return {"cells": self.cells, "parts": self.parts, "scores": scores[order], "classes": classes[order],
                "areas": counts[order + 1]}
