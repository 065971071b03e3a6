"""Which detected cells a prediction keeps: one rule for every path.

:class:`cellrcnn.Predictor` (whole images, batches and tiled fields), the
bioimage.io package's module (:class:`cellrcnn.zoo.CellLabels`), the napari
widget and ``cellrcnn-evaluate`` all keep cells by :func:`kept_cells`, with the
single-cell choice resolved by :func:`keeps_largest`. None of them has a copy.

The rule, in order:

1. detections scoring below ``score_threshold`` are dropped;
2. ``max_cells``: at most this many remain, the best-scoring ones;
3. the single-cell choice: one cell remains, chosen by ``single_rule`` among
   the *complete* cells (not touching the image border; all cells when every one
   touches it):

   - ``"largest"``: the largest;
   - ``"nucleated"``: the largest of those with a nucleus (at least
     :data:`MIN_NUCLEUS_FRACTION` of the cell's pixels), so that a large false
     detection without one (a ring of red blood cells around the white cell, with a
     hole where the cell is) is never kept; the largest when none has a nucleus or
     the model predicts no nucleus part;
   - ``"score"``: the best-scoring of those with a nucleus (as above).

The single-cell choice is on when asked for (``largest=True``). Left to the
model (``largest=None``) it is on only for a model trained on single-cell crops
(``ModelConfig.single_cell``) and an image like those crops
(:func:`looks_like_training_crops`): predicted whole, in one piece, and judged
by the cells the model finds in it, as given, not by a resize factor that may be
wrong (another microscope). Its side spans no more than :data:`CROP_LIKE` times
as many cells as the training crops, measured in its largest cell:

- every cell counts, a cell cut by the image's edge by its box's longer side
  (:func:`cell_sides`), so the one real cell of a crop counts even when it touches
  the edge, and a small false detection never moves the largest (issue 44);
- only cells with a nucleus (:func:`nucleated`) count, when the model predicts
  nuclei and finds one: a large false detection without a nucleus (a ring of red
  blood cells, several merged) says nothing about the image;
- with no cell found, the image's size once resized for the network decides (at
  most :data:`CROP_PIXELS` times the training images), as before cells were
  measured.

A tiled field, or any image much larger than its cells, keeps every cell.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..config.fields import SINGLE_RULES
from ..config.model import ModelConfig
from ..data.targets import border_labels

__all__ = ["CellChoice", "kept_cells", "keeps_largest", "looks_like_training_crops", "cell_sides", "cell_boxes",
           "border_labels", "CROP_LIKE", "CROP_PIXELS", "SINGLE_RULES", "MIN_NUCLEUS_FRACTION", "nucleated"]

#: An image whose longer side, counted in its largest cell's diameter, is at most this many times the training
#: crops' (``max_size / cell_size``) counts as a crop like them. Chosen on ``wbc_cellavision_few`` and the sample
#: (``benchmarks/crop_or_field.py``): their crops span at most 2.15 times as many cells as the training crops,
#: their 3 x 3 mosaics at least 3.2 (but one, whose largest detection is several cells merged); at 2.5 a crop's
#: cell may shrink by 14 % and a mosaic's grow by 28 % before the judgement turns, and a 3 x 3 mosaic of crops
#: like the training crops (3.0) is a field.
CROP_LIKE = 2.5
#: With no cell found: an image resized for the network to at most this many times the training images
#: (``max_size``) counts as a crop.
CROP_PIXELS = 3.0
#: A cell has a nucleus when at least this share of its pixels are nucleus.
MIN_NUCLEUS_FRACTION = 0.01


@dataclass(frozen=True)
class CellChoice:
    """Which cells a prediction keeps (see the module's rule).

    Parameters
    ----------
    score_threshold : float
        Minimum detection score, in [0, 1).
    largest : bool or None
        Keep only the largest complete cell: True always, False never, None
        as the model was trained (:func:`keeps_largest`).
    max_cells : int or None
        Keep at most this many cells, the best-scoring ones.
    single_rule : str
        How the single-cell choice picks its cell: ``"largest"``, ``"nucleated"``
        (the largest with a nucleus) or ``"score"`` (the best-scoring with a
        nucleus); see the module.
    """

    score_threshold: float = 0.5
    largest: bool | None = None
    max_cells: int | None = None
    single_rule: str = "nucleated"

    def __post_init__(self) -> None:
        threshold = self.score_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
                math.isfinite(threshold) and 0 <= threshold < 1):
            raise ValueError(f"score_threshold={threshold!r}: the score threshold must lie in [0, 1)")
        object.__setattr__(self, "score_threshold", float(threshold))
        if self.largest is not None and not isinstance(self.largest, (bool, np.bool_)):
            raise ValueError(f"largest={self.largest!r}: must be true, false or none (as the model was trained)")
        if self.max_cells is not None and (isinstance(self.max_cells, bool) or not isinstance(
                self.max_cells, (int, np.integer)) or self.max_cells < 1):
            raise ValueError(f"max_cells={self.max_cells!r}: must be a whole number of at least 1")
        if self.single_rule not in SINGLE_RULES:
            raise ValueError(f"single_rule={self.single_rule!r}: must be one of {', '.join(SINGLE_RULES)}")

    def replace(self, **given) -> "CellChoice":
        """This choice with the values given that are not None."""
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    def as_kwargs(self) -> dict:
        """The choice as keyword arguments (of :class:`cellrcnn.zoo.CellLabels`, or a package's rdf.yaml)."""
        return dataclasses.asdict(self)


def looks_like_training_crops(model: ModelConfig, shape: tuple[int, int], scale: float | None,
                              sides: np.ndarray | None = None, nucleus: np.ndarray | None = None) -> bool:
    """True when an image of ``shape`` (H, W) is like the model's single-cell training crops (see the module).

    Parameters
    ----------
    model : ModelConfig
        ``max_size`` and ``cell_size`` (the training crops' side and their cells' median side, network pixels).
    shape : tuple of int
        The image's (H, W), image pixels.
    scale : float or None
        The factor resizing the image for the network; None: resized to ``min_size``.
    sides : np.ndarray, optional
        float ``[N]``: the size of each cell found in the image, image pixels (:func:`cell_sides`).
    nucleus : np.ndarray, optional
        bool ``[N]``: which of those cells have a nucleus (:func:`nucleated`); when some do, only they count.

    Returns
    -------
    bool
        With a cell found (with a nucleus, when some have one) and a model that records its cell size: the
        image spans at most :data:`CROP_LIKE` times as many of its largest cells as a training crop spans of its
        cells (``max_size / cell_size``), whatever its magnification. Otherwise: the image resized by ``scale``
        is no larger than :data:`CROP_PIXELS` times the training images (``max_size`` network pixels).
    """
    sides = np.zeros(0) if sides is None else np.asarray(sides, dtype=float)
    if nucleus is not None and len(nucleus) == len(sides) and np.any(nucleus):
        sides = sides[np.asarray(nucleus, dtype=bool)]
    sides = sides[np.isfinite(sides) & (sides > 0)]
    if len(sides) and model.cell_size:
        return max(shape) / float(sides.max()) <= CROP_LIKE * model.max_size / model.cell_size
    if scale is None:
        scale = model.min_size / max(1, min(shape))
    return max(shape) * scale <= CROP_PIXELS * model.max_size


def cell_boxes(cells: np.ndarray, count: int) -> np.ndarray:
    """The boxes of the cells of a label image.

    Parameters
    ----------
    cells : np.ndarray
        int ``[H, W]`` labels 1..``count`` (0 background).
    count : int
        Number of labels ``N``.

    Returns
    -------
    np.ndarray
        float ``[N, 4]`` boxes ``(x0, y0, x1, y1)``, end exclusive, image pixels; NaN for a label with no pixel.
    """
    from scipy import ndimage

    boxes = np.full((count, 4), np.nan)
    for i, box in enumerate(ndimage.find_objects(np.asarray(cells, dtype=np.int64), count)):
        if box is not None:
            boxes[i] = (box[1].start, box[0].start, box[1].stop, box[0].stop)
    return boxes


def cell_sides(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each cell's size from its box: the square root of the box's area for a box clear of the image's edges; the
    box's longer side for one touching an edge, whose cell the edge cuts (its longer side is the cut cell's
    best measure, and never more than the whole cell's).

    Parameters
    ----------
    boxes : np.ndarray
        float ``[N, 4]`` boxes ``(x0, y0, x1, y1)``, end exclusive, image pixels (:func:`cell_boxes`).
    shape : tuple of int
        The image's (H, W).

    Returns
    -------
    np.ndarray
        float ``[N]`` sizes in image pixels; NaN where the box is NaN.
    """
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cut = (boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, 2] >= shape[1]) | (boxes[:, 3] >= shape[0])
    return np.where(cut, np.maximum(width, height), np.sqrt(width * height))


def keeps_largest(choice: CellChoice, model: ModelConfig, shape: tuple[int, int], scale: float | None,
                  tiled: bool, sides: np.ndarray | None = None, nucleus: np.ndarray | None = None) -> bool:
    """Whether the single-cell choice applies to one image.

    Parameters
    ----------
    choice : CellChoice
        ``largest`` True or False decides; None follows the model.
    model : ModelConfig
        The model's config: ``single_cell`` and the training size.
    shape : tuple of int
        The image's (H, W) in image pixels.
    scale : float or None
        The factor resizing the image for the network.
    tiled : bool
        The image is predicted in several tiles (a whole field).
    sides, nucleus : np.ndarray, optional
        float ``[N]``: the sizes of the cells found in it (:func:`cell_sides`), and bool ``[N]``: which have a
        nucleus (:func:`nucleated`); see :func:`looks_like_training_crops`.
    """
    if choice.largest is not None:
        return bool(choice.largest)
    return bool(model.single_cell) and not tiled and looks_like_training_crops(model, shape, scale, sides, nucleus)


def nucleated(cells: np.ndarray, parts: np.ndarray, count: int, part_names: tuple[str, ...]) -> np.ndarray | None:
    """Which cells have a nucleus: at least :data:`MIN_NUCLEUS_FRACTION` of their pixels are part ``nucleus``.

    Parameters
    ----------
    cells : np.ndarray
        int ``[H, W]`` cell labels 1..``count`` (0 background).
    parts : np.ndarray
        int ``[H, W]`` part labels.
    count : int
        Number of detections ``N``.
    part_names : tuple of str
        The model's parts, background first: the nucleus is the one named ``"nucleus"``.

    Returns
    -------
    np.ndarray or None
        bool ``[N]``; None when the model has no nucleus part.
    """
    if "nucleus" not in part_names:
        return None
    nucleus = list(part_names).index("nucleus")
    cells = np.asarray(cells).ravel()
    areas = np.bincount(cells, minlength=count + 1)[1:count + 1]
    inside = np.bincount(cells[np.asarray(parts).ravel() == nucleus], minlength=count + 1)[1:count + 1]
    return inside >= MIN_NUCLEUS_FRACTION * np.maximum(areas, 1)


def kept_cells(scores: np.ndarray, areas: np.ndarray, complete: np.ndarray, score_threshold: float = 0.0,
               largest: bool = False, max_cells: int | None = None, nucleus: np.ndarray | None = None,
               single_rule: str = "nucleated") -> np.ndarray:
    """Indices of the cells kept by the rule (see the module), in the order given.

    Parameters
    ----------
    scores : np.ndarray
        float ``[N]`` detection scores, in descending order (label order).
    areas : np.ndarray
        ``[N]`` pixel counts of the cells in the label image.
    complete : np.ndarray
        bool ``[N]``, True for a cell that does not touch the image border.
    score_threshold, max_cells, single_rule
        As in :class:`CellChoice`.
    largest : bool
        The single-cell choice, resolved (:func:`keeps_largest`).
    nucleus : np.ndarray or None
        bool ``[N]``, True for a cell with a nucleus (:func:`nucleated`); None
        when the model predicts no nucleus.

    Returns
    -------
    np.ndarray
        int64 ``[K]`` indices into the inputs, ascending; ``K <= N``.
    """
    scores, areas, complete = np.asarray(scores), np.asarray(areas), np.asarray(complete, dtype=bool)
    if not len(scores) == len(areas) == len(complete) or (nucleus is not None and len(nucleus) != len(scores)):
        raise ValueError(f"scores, areas, complete and nucleus must have one length, got {len(scores)}, "
                         f"{len(areas)}, {len(complete)}, {None if nucleus is None else len(nucleus)}")
    if single_rule not in SINGLE_RULES:
        raise ValueError(f"single_rule={single_rule!r}: must be one of {', '.join(SINGLE_RULES)}")
    keep = np.flatnonzero(scores >= score_threshold)
    if max_cells is not None:
        keep = keep[:max_cells]
    if largest and len(keep):
        pool = keep[complete[keep]] if complete[keep].any() else keep
        if single_rule != "largest" and nucleus is not None and np.asarray(nucleus, bool)[pool].any():
            pool = pool[np.asarray(nucleus, bool)[pool]]
        by = scores if single_rule == "score" else areas
        keep = pool[[int(np.argmax(by[pool]))]]
    return keep.astype(np.int64)
