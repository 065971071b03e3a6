"""Prediction: a trained model applied to images, giving label images and a per-cell table."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from skimage.measure import regionprops_table

from .config import Config
from .io import DataError, normalize_image, read_image
from .model import model_from_checkpoint, resolve_device, to_label_images
from .targets import largest_complete_label

__all__ = ["Prediction", "PathResult", "Predictor", "measure_cells"]

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """What the model finds in one image.

    Attributes
    ----------
    name : str
        The image's name (file stem).
    image : np.ndarray
        float32 ``[H, W, 3]``, the normalised image the model saw.
    cells : np.ndarray
        uint16 ``[H, W]`` cell labels, 0 background, 1..N by descending score.
    parts : np.ndarray
        uint8 ``[H, W]`` part labels (index into the config's parts).
    table : pandas.DataFrame
        One row per cell: see :func:`measure_cells`.
    """

    name: str
    image: np.ndarray
    cells: np.ndarray
    parts: np.ndarray
    table: pd.DataFrame = field(repr=False)


def measure_cells(cells: np.ndarray, parts: np.ndarray, image: np.ndarray, part_names: tuple[str, ...],
                  scores: dict[int, float] | None = None, classes: dict[int, str] | None = None,
                  pixel_size: float | None = None, name: str = "image") -> pd.DataFrame:
    """Per-cell measurements from label images.

    Parameters
    ----------
    cells : np.ndarray
        Integer ``[H, W]`` cell labels, 0 background.
    parts : np.ndarray
        Integer ``[H, W]`` part labels.
    image : np.ndarray
        ``[H, W, C]`` intensities (the normalised image, values 0..1).
    part_names : tuple of str
        Part names, background first.
    scores, classes : dict, optional
        Detection score and class name of each cell label.
    pixel_size : float, optional
        Micrometres per pixel; adds areas in square micrometres.
    name : str
        The image's name, first column.

    Returns
    -------
    pandas.DataFrame
        image, cell_id, class, score, bbox_x0/y0/x1/y1, centroid_x/y, area_px
        (whole cell), ``<part>_area_px`` per part, ``*_um2`` with a pixel size,
        ``nc_ratio`` (nucleus / cytoplasm area, when both parts exist) and
        ``mean_<part>_c<k>``, the mean intensity of channel k in each part.
    """
    ids = np.unique(cells[cells > 0])
    props = regionprops_table(cells.astype(np.int64), properties=("label", "bbox", "centroid"))
    K, C = len(part_names), image.shape[-1]
    index = np.searchsorted(ids, cells[cells > 0])
    part = parts[cells > 0].astype(np.int64)
    counts = np.bincount(index * K + part, minlength=len(ids) * K).reshape(len(ids), K)
    table = pd.DataFrame({
        "image": name,
        "cell_id": props["label"],
        "class": [(classes or {}).get(int(i), "cell") for i in props["label"]],
        "score": [(scores or {}).get(int(i), np.nan) for i in props["label"]],
        "bbox_x0": props["bbox-1"], "bbox_y0": props["bbox-0"], "bbox_x1": props["bbox-3"], "bbox_y1": props["bbox-2"],
        "centroid_x": props["centroid-1"], "centroid_y": props["centroid-0"],
        "area_px": counts.sum(axis=1),
    })
    for k, part_name in enumerate(part_names[1:], start=1):
        table[f"{part_name}_area_px"] = counts[:, k]
    if pixel_size:
        for column in [c for c in table.columns if c.endswith("area_px")]:
            table[column.replace("_px", "_um2")] = table[column] * pixel_size**2
    if "nucleus" in part_names and "cytoplasm" in part_names:
        cyto = table["cytoplasm_area_px"].astype(float)
        table["nc_ratio"] = table["nucleus_area_px"] / cyto.where(cyto > 0)
    pixels = image[cells > 0].astype(np.float64)
    for k, part_name in enumerate(part_names[1:], start=1):
        for c in range(C):
            sums = np.bincount(index * K + part, weights=pixels[:, c], minlength=len(ids) * K).reshape(len(ids), K)
            table[f"mean_{part_name}_c{c}"] = sums[:, k] / np.where(counts[:, k] > 0, counts[:, k], np.nan)
    return table


@dataclass
class PathResult:
    """The outcome of one file in :meth:`Predictor.predict_paths`: a prediction, or the error that stopped it."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None


class Predictor:
    """A trained model ready to predict images the way it was trained to read them.

    Examples
    --------
    >>> predictor = Predictor.from_checkpoint("runs/wbc/best.pt")
    >>> result = predictor.predict("cell_001.tif")
    >>> result.cells, result.parts, result.table
    """

    def __init__(self, model: torch.nn.Module, config: Config, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto") -> "Predictor":
        """Load ``best.pt`` or ``last.pt`` of a run; ``device="auto"`` picks CUDA when present."""
        model, config = model_from_checkpoint(path, map_location="cpu")
        return cls(model, config, resolve_device(device))

    @property
    def parts(self) -> tuple[str, ...]:
        return self.config.model.parts

    def _load(self, image) -> tuple[str, np.ndarray]:
        if isinstance(image, (str, os.PathLike)):
            return Path(image).stem, read_image(image, self.config.data.percentiles)
        return "image", normalize_image(np.asarray(image), self.config.data.percentiles)

    @torch.no_grad()
    def predict_batch(self, images: list, names: list[str] | None = None, score_threshold: float = 0.5,
                      largest: bool = False, max_cells: int | None = None,
                      pixel_size: float | None = None) -> list[Prediction]:
        """Predict several images (paths or arrays) in one forward pass; see :meth:`predict`."""
        loaded = [self._load(img) for img in images]
        names = names or [n for n, _ in loaded]
        tensors = [torch.from_numpy(arr).permute(2, 0, 1).to(self.device) for _, arr in loaded]
        outputs = self.model(tensors)
        return [self._finish(name, arr, out, score_threshold, largest, max_cells, pixel_size)
                for name, (_, arr), out in zip(names, loaded, outputs)]

    def predict_paths(self, paths: list, batch_size: int = 1, **options) -> Iterator[PathResult]:
        """Predict image files in batches, one result per file, in order.

        A batch holding an unreadable file is predicted again file by file, so one
        bad file costs only itself: its result carries the error instead of a
        prediction, and the rest go on.

        Parameters
        ----------
        paths : list of path
            Image files (see :func:`cellrcnn.io.list_images`).
        batch_size : int
            Images per forward pass.
        **options
            Passed to :meth:`predict_batch` (``score_threshold``, ``largest``,
            ``max_cells``, ``pixel_size``).

        Yields
        ------
        PathResult
            ``path``, and ``prediction`` or ``error`` (one line naming the file).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for start in range(0, len(paths), batch_size):
            batch = list(paths[start:start + batch_size])
            try:
                predictions = self.predict_batch(batch, **options)
            except DataError as err:
                if len(batch) > 1:  # find the bad file; the others still get predicted
                    yield from self.predict_paths(batch, 1, **options)
                else:
                    logger.error("failed: %s", err)
                    yield PathResult(Path(batch[0]), error=str(err))
                continue
            for path, prediction in zip(batch, predictions):
                yield PathResult(Path(path), prediction=prediction)

    def predict(self, image, name: str | None = None, score_threshold: float = 0.5, largest: bool = False,
                max_cells: int | None = None, pixel_size: float | None = None) -> Prediction:
        """Predict one image.

        Parameters
        ----------
        image : path or np.ndarray
            A file (read as in training) or an array ``[H, W]``, ``[H, W, C]`` or
            ``[C, H, W]``, normalised with the run's saved settings.
        name : str, optional
            Name for the table (default: the file stem, or "image").
        score_threshold : float
            Minimum detection score.
        largest : bool
            Keep only the largest complete cell, as ``--targets largest`` in training.
        max_cells : int, optional
            Keep at most this many cells, the best-scoring ones.
        pixel_size : float, optional
            Micrometres per pixel, for areas in square micrometres.
        """
        return self.predict_batch([image], [name] if name else None, score_threshold, largest, max_cells,
                                  pixel_size)[0]

    def _finish(self, name, image, output, score_threshold, largest, max_cells, pixel_size) -> Prediction:
        output = {k: v.cpu() for k, v in output.items()}
        labels = to_label_images(output, score_threshold)
        cells, parts, kept = labels["cells"].numpy(), labels["parts"].numpy(), labels["kept"].numpy()
        if max_cells is not None:
            cells = np.where(cells > max_cells, 0, cells)  # labels follow descending score
        if largest:
            cells = np.where(cells == largest_complete_label(cells), cells, 0)
        # Renumber the cells still present 1..N (a cell fully covered by better ones vanishes), in score order.
        present = np.unique(cells[cells > 0])
        lut = np.zeros(int(cells.max()) + 1, dtype=np.int64)
        lut[present] = np.arange(1, len(present) + 1)
        cells = lut[cells]
        parts = np.where(cells > 0, parts, 0).astype(np.uint8)
        class_names = self.config.data.class_names
        detections = {new: int(kept[old - 1]) for new, old in enumerate(present, start=1)}
        scores = {new: float(output["scores"][d]) for new, d in detections.items()}
        classes = {new: class_names[min(int(output["labels"][d]), len(class_names)) - 1]
                   for new, d in detections.items()}
        table = measure_cells(cells, parts, image, self.parts, scores, classes, pixel_size, name)
        return Prediction(name=name, image=image, cells=cells.astype(np.uint16), parts=parts, table=table)
