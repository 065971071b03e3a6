"""Test-time augmentation: an image predicted in its 8 flips and 90-degree turns, merged per cell.

Pure numpy: :func:`to_view` and :func:`from_view` move arrays between an image and
one of its views (the dihedral group :data:`VIEWS`), and :func:`merge_views` turns
the label images predicted in each view, brought back to the image, into one: a
cell found in at least half of the views is kept, its pixels are those most of
its views give it, each pixel's part is the one most of them say, and its score
is their mean. :class:`~cellrcnn.inference.predictor.Predictor` (``tta=True``)
runs the model on the views.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["VIEWS", "to_view", "from_view", "merge_views"]

#: The 8 views: (quarter turns counter-clockwise, mirrored left-right first).
VIEWS: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))


def to_view(array: np.ndarray, view: tuple[int, bool]) -> np.ndarray:
    """``array`` (``[H, W]`` or ``[H, W, C]``) as seen in ``view``."""
    turns, flip = view
    return np.rot90(array[:, ::-1] if flip else array, turns)


def from_view(array: np.ndarray, view: tuple[int, bool]) -> np.ndarray:
    """The inverse of :func:`to_view`: an array of the view back in the image's frame."""
    turns, flip = view
    back = np.rot90(array, -turns)
    return back[:, ::-1] if flip else back


def _instances(view: int, cells: np.ndarray, parts: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> list:
    found = []
    for label, window in enumerate(ndimage.find_objects(cells), start=1):
        if window is not None and label <= len(scores):
            own = cells[window] == label
            found.append({"view": view, "window": window, "mask": own, "parts": np.where(own, parts[window], 0),
                          "score": float(scores[label - 1]), "cls": int(classes[label - 1])})
    return found


def _iou(a: dict, b: dict) -> float:
    (ay, ax), (by, bx) = a["window"], b["window"]
    y0, y1, x0, x1 = max(ay.start, by.start), min(ay.stop, by.stop), max(ax.start, bx.start), min(ax.stop, bx.stop)
    if y0 >= y1 or x0 >= x1:
        return 0.0
    inter = np.count_nonzero(a["mask"][y0 - ay.start:y1 - ay.start, x0 - ax.start:x1 - ax.start]
                             & b["mask"][y0 - by.start:y1 - by.start, x0 - bx.start:x1 - bx.start])
    return inter / (np.count_nonzero(a["mask"]) + np.count_nonzero(b["mask"]) - inter)


def merge_views(views: list[dict], min_iou: float = 0.5, min_votes: int | None = None) -> dict:
    """One prediction from the label images of several views of an image.

    Parameters
    ----------
    views : list of dict
        Per view, in the image's frame: ``cells`` int ``[H, W]`` labels 1..N,
        ``parts`` int ``[H, W]``, ``scores`` float ``[N]`` and ``classes`` int
        ``[N]`` of labels 1..N.
    min_iou : float
        Two views' cells are one cell when their masks overlap by this IoU.
    min_votes : int, optional
        Views that must find a cell for it to be kept (default: half of them).

    Returns
    -------
    dict
        ``cells`` uint16 ``[H, W]`` labels 1..K by descending score (a pixel
        claimed by two cells goes to the better-scoring one), ``parts`` uint8
        ``[H, W]``, ``scores`` float ``[K]`` (the mean over the views that found
        the cell), ``classes`` int ``[K]`` (their most common class) and
        ``areas`` int ``[K]``, as :meth:`~cellrcnn.inference.tiles.Stitcher.finish`
        gives for one view.
    """
    if not views:
        raise ValueError("merge_views needs at least one view")
    shape = views[0]["cells"].shape
    votes_needed = min_votes if min_votes is not None else (len(views) + 1) // 2
    pool = [inst for i, v in enumerate(views) for inst in _instances(i, v["cells"], v["parts"], v["scores"],
                                                                    v["classes"])]
    pool.sort(key=lambda inst: -inst["score"])
    taken = [False] * len(pool)
    merged = []
    for a, lead in enumerate(pool):
        if taken[a]:
            continue
        taken[a] = True
        members, seen = [lead], {lead["view"]}
        for b in range(a + 1, len(pool)):  # each other view's best match, at most one per view
            other = pool[b]
            if taken[b] or other["view"] in seen:
                continue
            if _iou(lead, other) >= min_iou:
                best = max((c for c in range(b, len(pool)) if not taken[c] and pool[c]["view"] == other["view"]),
                           key=lambda c: _iou(lead, pool[c]))
                taken[best] = True
                members.append(pool[best])
                seen.add(other["view"])
        if len(members) >= votes_needed:
            merged.append(_merge_members(members))
    merged.sort(key=lambda m: -m["score"])
    cells = np.zeros(shape, np.uint16 if len(merged) <= np.iinfo(np.uint16).max else np.uint32)
    parts = np.zeros(shape, np.uint8)
    kept = []
    for m in merged:
        free = m["mask"] & (cells[m["window"]] == 0)  # the better-scoring cell keeps a shared pixel
        if free.any():
            kept.append(m)
            cells[m["window"]][free] = len(kept)
            parts[m["window"]][free] = m["parts"][free]
    areas = np.bincount(cells.ravel(), minlength=len(kept) + 1)[1:]
    return {"cells": cells, "parts": parts, "scores": np.array([m["score"] for m in kept], dtype=float),
            "classes": np.array([m["cls"] for m in kept], dtype=np.int64), "areas": areas}


def _merge_members(members: list[dict]) -> dict:
    """One cell from its views: the pixels most of them give it, each pixel's most common part."""
    y0 = min(m["window"][0].start for m in members)
    y1 = max(m["window"][0].stop for m in members)
    x0 = min(m["window"][1].start for m in members)
    x1 = max(m["window"][1].stop for m in members)
    top = int(max(int(m["parts"].max()) for m in members))
    counts = np.zeros((top + 1, y1 - y0, x1 - x0), np.int32)  # votes per part, background included
    for m in members:
        (wy, wx) = m["window"]
        window = (slice(wy.start - y0, wy.stop - y0), slice(wx.start - x0, wx.stop - x0))
        for k in range(1, top + 1):
            counts[k][window] += m["parts"] == k
    inside = counts[1:].sum(axis=0)
    mask = 2 * inside >= len(members)
    part = np.where(mask, 1 + np.argmax(counts[1:], axis=0), 0).astype(np.uint8)
    classes, n = np.unique([m["cls"] for m in members], return_counts=True)
    return {"window": (slice(y0, y1), slice(x0, x1)), "mask": mask, "parts": part,
            "score": float(np.mean([m["score"] for m in members])), "cls": int(classes[np.argmax(n)])}
