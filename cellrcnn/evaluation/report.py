"""Evaluation of predicted label images against ground truth: tables and a figure."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.targets import annotated_part_maps, instances_from_labels
from ..io.coco import PREDICTION_FILE, coco_masks, read_coco
from ..io.files import DataError
from ..io.masks import read_labels
from ..viz.style import part_colour
from .metrics import (ISBI_GOOD_DICE, NUCLEUS_OVERLAP, coco_mask_ap, isbi_cells, isbi_summary, matching,
                      nucleus_detection, nucleus_summary, part_dice)

__all__ = ["Scored", "evaluate", "score_folder", "truth_label_images", "worst_images_figure", "THRESHOLDS"]

#: IoU thresholds of the instance matching: 0.50, 0.55, ..., 0.95.
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.5, 1.0, 0.05), 2))


@dataclass
class Scored:
    """One image's ground truth and prediction, as label images.

    ``pred_parts`` may be None (instance labels only, from another tool); then the
    part metrics of that image are NaN. ``scores`` maps predicted labels to
    confidences (None: every prediction scores 1). ``true_instances``, uint8
    ``[N, H, W]`` per-cell part maps, is the truth as it is when cells overlap (COCO
    ground truth), and ``pred_instances`` the same of the prediction (each cell's whole
    mask, :attr:`Prediction.masks`): COCO mask AP and the ISBI measures use them; the
    label images give overlaps to one cell.
    """

    name: str
    true_cells: np.ndarray
    true_parts: np.ndarray
    pred_cells: np.ndarray
    pred_parts: np.ndarray | None = None
    scores: dict[int, float] | None = None
    image: np.ndarray | None = None
    true_instances: np.ndarray | None = None
    pred_instances: np.ndarray | None = None

    def truth(self) -> np.ndarray:
        """uint8 ``[N, H, W]`` true cells' part maps, overlaps kept where known (cells without pixels left out)."""
        truth = self.true_instances if self.true_instances is not None else \
            instances_from_labels(self.true_cells, self.true_parts)
        return truth[(truth > 0).any(axis=(1, 2))]

    def predicted(self) -> np.ndarray:
        """uint8 ``[M, H, W]`` predicted cells' part maps (cell ``k`` at ``k - 1``), overlaps kept where known."""
        if self.pred_instances is not None:
            return self.pred_instances
        return instances_from_labels(self.pred_cells, self.pred_parts if self.pred_parts is not None else
                                     self.pred_cells)


def _overlap_measures(item: Scored, nucleus: int | None) -> tuple[pd.DataFrame, dict[str, float]]:
    """The ISBI 2014 measures of one image: each true cell's best predicted cell, and nucleus detection."""
    truth, pred = item.truth(), item.predicted()
    cells = isbi_cells(truth > 0, pred > 0)
    if nucleus is None or item.pred_parts is None:
        return cells, {}
    true_nuclei, pred_nuclei = truth == nucleus, pred == nucleus
    return cells, nucleus_detection(true_nuclei[true_nuclei.any(axis=(1, 2))],
                                    pred_nuclei[pred_nuclei.any(axis=(1, 2))])


def evaluate(items: list[Scored], part_names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """Score every image and the whole set.

    Returns
    -------
    dict
        ``per_image``: one row per image with the Dice and IoU of each part and
        of the whole cell, and precision, recall, F1 and PQ at IoU 0.5 and 0.75;
        ``summary``: rows of (metric, threshold, value) for the whole set: the
        mean Dice and IoU per part, matching pooled over all images at every
        threshold 0.50:0.95, and COCO mask AP, AP50 and AP75 (pycocotools).
    """
    rows, pooled, overlap_cells, nuclei = [], [], [], []
    nucleus = part_names.index("nucleus") if "nucleus" in part_names else None
    for item in items:
        row = {"image": item.name, "true_cells": int(len(np.unique(item.true_cells)) - (item.true_cells == 0).any()),
               "pred_cells": int(len(np.unique(item.pred_cells)) - (item.pred_cells == 0).any())}
        if item.pred_parts is not None:
            scores = part_dice(item.pred_parts, item.true_parts, part_names)
        else:
            scores = {f"{n}_dice": np.nan for n in part_names[1:]}
            scores.update(part_dice((item.pred_cells > 0).astype(np.uint8), (item.true_parts > 0).astype(np.uint8),
                                    ("background", "cell")))
            scores["part_dice"] = np.nan
        row.update(scores)
        row.update({k.replace("_dice", "_iou"): v / (2 - v) for k, v in scores.items() if k != "part_dice"})
        table = matching(item.true_cells, item.pred_cells, THRESHOLDS)
        table["image"] = item.name
        pooled.append(table)
        for t in (0.5, 0.75):
            at = table.loc[np.isclose(table["threshold"], t)].iloc[0]
            row.update({f"{m}@{t:g}": at[m] for m in ("precision", "recall", "f1", "pq")})
        cells, found = _overlap_measures(item, nucleus)
        overlap_cells.append(cells)
        row.update({f"isbi_{k}": v for k, v in isbi_summary(cells).items() if k != "cells"})
        if found:
            nuclei.append(found)
            row["nucleus_f1"] = found["f1"]
        rows.append(row)
    per_image = pd.DataFrame(rows)

    summary = []
    for column in [c for c in per_image.columns if c.endswith(("_dice", "_iou")) and not c.startswith("isbi_")]:
        summary.append({"metric": f"mean {column}", "threshold": np.nan, "value": per_image[column].mean()})
    counts = pd.concat(pooled).groupby("threshold")[["tp", "fp", "fn", "iou_sum"]].sum()
    for t, c in counts.iterrows():
        n_pred, n_true = c.tp + c.fp, c.tp + c.fn
        summary += [
            {"metric": "precision", "threshold": t, "value": c.tp / n_pred if n_pred else np.nan},
            {"metric": "recall", "threshold": t, "value": c.tp / n_true if n_true else np.nan},
            {"metric": "f1", "threshold": t, "value": 2 * c.tp / (n_true + n_pred) if n_true + n_pred else np.nan},
            {"metric": "pq", "threshold": t, "value": c.iou_sum / (c.tp + c.fp / 2 + c.fn / 2)
             if c.tp + c.fp + c.fn else np.nan},
        ]
    ap = coco_mask_ap([i.truth() if i.true_instances is not None else i.true_cells for i in items],
                      [i.predicted() if i.pred_instances is not None else i.pred_cells for i in items],
                      [i.scores or {} for i in items])
    summary += [{"metric": f"COCO mask {k}", "threshold": np.nan, "value": v} for k, v in ap.items()]
    isbi = isbi_summary(pd.concat(overlap_cells, ignore_index=True)) if overlap_cells else {}
    names = {"dice": "ISBI cell Dice (good cells)", "fno": "ISBI FNo", "tpp": "ISBI TPp", "fpp": "ISBI FPp"}
    summary += [{"metric": names[k], "threshold": ISBI_GOOD_DICE, "value": v} for k, v in isbi.items() if k in names]
    if nuclei:
        summary.append({"metric": "nucleus detection F1", "threshold": NUCLEUS_OVERLAP,
                        "value": nucleus_summary(nuclei)["f1"]})
    return {"per_image": per_image, "summary": pd.DataFrame(summary)}


def truth_label_images(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dataset target's ``masks`` (uint8 ``[N, H, W]`` part labels) as cells (int64 labels 1..N) and parts
    (uint8), two label images."""
    masks = np.asarray(masks)
    cells = np.zeros(masks.shape[1:], dtype=np.int64)
    for k, mask in enumerate(masks, start=1):
        cells[mask > 0] = k
    parts = masks.max(axis=0) if len(masks) else np.zeros(masks.shape[1:], dtype=np.uint8)
    return cells, parts.astype(np.uint8)


def score_folder(dataset, part_names: tuple[str, ...], predictions, **options) -> dict:
    """Score predictions for every image of a dataset against its ground truth.

    Parameters
    ----------
    dataset : CellDataset
        The images and their true masks (``dataset.pairs`` names the files).
    part_names : tuple of str
        Part names, background first.
    predictions : Predictor or path
        A :class:`~cellrcnn.inference.predictor.Predictor` to run on each image (``options``:
        ``score_threshold``, ``largest``), or a folder of label TIFFs written for
        the images (``options``: ``cells_suffix``, default ``"_cells"``, and
        ``parts_suffix``, default ``"_parts"``; without a parts file only cells
        are scored). A ``cells.json`` there (``cellrcnn-predict --coco``) gives each
        cell's whole mask and score, for COCO AP and the ISBI measures.

    Returns
    -------
    dict
        ``per_image`` and ``summary`` as from :func:`evaluate`, and ``items``
        (the :class:`Scored` images, for :func:`worst_images_figure`).

    Raises
    ------
    DataError
        A prediction file is missing or its size differs from its image.
    """
    items = []
    for i, pair in enumerate(dataset.pairs):
        image, target = dataset[i]
        true_cells, true_parts = truth_label_images(target["masks"].numpy())
        if isinstance(predictions, (str, os.PathLike)):
            pred_cells, pred_parts = _read_predicted(Path(predictions), pair, true_cells.shape, **options)
            scores, whole = None, None
            coco = Path(predictions) / PREDICTION_FILE
            if coco.is_file():  # cellrcnn-predict --coco: whole masks and scores, overlaps kept
                whole, scores = _read_predicted_coco(coco, pair, true_cells.shape, part_names)
        else:
            result = predictions.predict(pair.image, **options)
            scores = dict(zip(result.table["cell_id"].astype(int), result.table["score"]))
            pred_cells, pred_parts = result.cells, result.parts
            whole = (np.stack([m.full(pred_cells.shape) for m in result.masks]) if result.masks
                     else None)  # None: predicted in tiles (label-image remainders), or no cell
        items.append(Scored(pair.name, true_cells, true_parts, pred_cells, pred_parts, scores,
                            image.permute(1, 2, 0).numpy(), target["masks"].numpy(), whole))
    return {**evaluate(items, part_names), "items": items}


def _read_predicted_coco(path: Path, pair, shape: tuple[int, int],
                         part_names: tuple[str, ...]) -> tuple[np.ndarray | None, dict[int, float] | None]:
    """The whole masks (uint8 ``[N, H, W]`` part maps) and scores of one image's cells in a COCO file written
    by ``cellrcnn-predict --coco``, cell ``k + 1`` at ``k`` in the file's order; None when it lists no such
    image."""
    coco = read_coco(path)
    entry = next((e for e in coco.images.values() if Path(e.file_name).name == pair.image.name), None)
    if entry is None:
        return None, None
    if (entry.height, entry.width) != shape:
        raise DataError(f"{path}: says {pair.image.name} is {entry.width}x{entry.height} pixels, but it is "
                        f"{shape[1]}x{shape[0]}; score predictions of these images")
    # as cellrcnn writes it: the cell category first, then the parts with their own category, in part order
    cell, *own = sorted(coco.categories, key=coco.categories.get)
    if len(own) != len(part_names) - 2:
        raise DataError(f"{path}: has categories {', '.join([cell, *own])}, not a cell and one category for each "
                        f"of {', '.join(part_names[2:])}; give the cells.json that cellrcnn-predict --coco wrote")
    instances, _ = annotated_part_maps(coco_masks(coco, entry.id, cell, tuple(own)), tuple(own))
    scores = [a.get("score", 1.0) for a in coco.annotations[entry.id] if a["category_id"] == coco.categories[cell]]
    return instances, {k: float(score) for k, score in enumerate(scores, start=1)}


def _read_predicted(folder: Path, pair, shape: tuple[int, int], cells_suffix: str = "_cells",
                    parts_suffix: str = "_parts") -> tuple[np.ndarray, np.ndarray | None]:
    cells_path, parts_path = folder / f"{pair.name}{cells_suffix}.tif", folder / f"{pair.name}{parts_suffix}.tif"
    if not cells_path.is_file():
        raise DataError(f"{cells_path}: no prediction for {pair.image.name}")
    cells = read_labels(cells_path)
    if cells.shape != shape:
        raise DataError(f"{cells_path}: size {cells.shape} differs from {pair.image.name} {shape}")
    return cells, read_labels(parts_path) if parts_path.is_file() else None


def _colour_parts(parts: np.ndarray, part_names: tuple[str, ...]) -> np.ndarray:
    rgb = np.ones((*parts.shape, 3))
    for k, name in enumerate(part_names[1:], start=1):
        rgb[parts == k] = part_colour(name, k, scale=1.0)
    return rgb


def worst_images_figure(path: str | os.PathLike, items: list[Scored], per_image: pd.DataFrame,
                        part_names: tuple[str, ...], count: int = 6, overwrite: bool = False) -> Path:
    """A PNG of the ``count`` images with the lowest part Dice (cell Dice without parts):
    image, true parts, predicted parts."""
    # A Figure of its own, outside pyplot: no backend switched, nothing left open in a notebook.
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from ..utils.files import atomic_write

    key = "part_dice" if per_image["part_dice"].notna().any() else "cell_dice"
    worst = per_image.nsmallest(count, key)
    by_name = {i.name: i for i in items}
    fig = Figure(figsize=(7.5, 2.5 * len(worst)))
    axes = fig.subplots(len(worst), 3, squeeze=False)
    for row, (_, record) in zip(axes, worst.iterrows()):
        item = by_name[record["image"]]
        if item.image is not None:
            row[0].imshow(np.clip(item.image, 0, 1))
        row[0].set_title(f"{item.name}  ({key.replace('_', ' ')} {record[key]:.2f})", fontsize=9)
        row[1].imshow(_colour_parts(item.true_parts, part_names))
        row[1].set_title("ground truth", fontsize=9)
        predicted = item.pred_parts if item.pred_parts is not None else (item.pred_cells > 0).astype(np.uint8)
        row[2].imshow(_colour_parts(predicted, part_names))
        row[2].set_title("prediction", fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Patch(color=part_colour(n, k, 1.0), label=n) for k, n in enumerate(part_names) if k > 0]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle("Images with the lowest Dice", fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite=overwrite)
