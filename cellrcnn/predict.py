"""Prediction: a trained model applied to images, giving label images and a per-cell table."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Iterator

import numpy as np
import pandas as pd
import torch
from skimage.measure import regionprops_table

from tqdm.auto import tqdm

from .config import Config, ModelConfig
from .io import DataError, ImageField, field_from_array, open_field
from .model import build_model, model_from_checkpoint, predict_labels, resolve_device, run_checkpoint
from .selection import CellChoice, border_labels, kept_cells, keeps_largest
from .tiles import Stitcher, Tile, grid_overlap, relabel, tile_grid
from .zoo import is_package, read_package

__all__ = ["Prediction", "PathResult", "Predictor", "measure_cells", "prediction_scale", "scale_from_diameters",
           "NETWORK_TILE", "EDGE_MARGIN", "SCALE_LADDER"]

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """What the model finds in one image.

    Attributes
    ----------
    name : str
        The image's name (file stem).
    image : np.ndarray or None
        float32 ``[H, W, 3]``, the normalised image the model saw; None for an
        image predicted in tiles (it is read window by window, never whole).
    cells : np.ndarray
        uint16 ``[H, W]`` cell labels, 0 background, 1..N by descending score
        (uint32 beyond 65535 cells).
    parts : np.ndarray
        uint8 ``[H, W]`` part labels (index into the config's parts).
    table : pandas.DataFrame
        One row per cell: see :func:`measure_cells`.
    """

    name: str
    image: np.ndarray | None
    cells: np.ndarray
    parts: np.ndarray
    table: pd.DataFrame = field(repr=False)


def measure_cells(cells: np.ndarray, parts: np.ndarray, image, part_names: tuple[str, ...],
                  scores: dict[int, float] | None = None, classes: dict[int, str] | None = None,
                  pixel_size: float | None = None, name: str = "image", block: int = 1024) -> pd.DataFrame:
    """Per-cell measurements from label images.

    The images are read block by block, so a whole field of view is measured
    without a copy of it.

    Parameters
    ----------
    cells : np.ndarray
        Integer ``[H, W]`` cell labels, 0 background.
    parts : np.ndarray
        Integer ``[H, W]`` part labels.
    image : np.ndarray or ImageField
        ``[H, W, C]`` intensities (the normalised image, values 0..1), or an
        :class:`~cellrcnn.io.ImageField` read window by window.
    part_names : tuple of str
        Part names, background first.
    scores, classes : dict, optional
        Detection score and class name of each cell label.
    pixel_size : float, optional
        Micrometres per pixel; adds areas in square micrometres.
    name : str
        The image's name, first column.
    block : int
        Side of the blocks read at a time.

    Returns
    -------
    pandas.DataFrame
        image, cell_id, class, score, bbox_x0/y0/x1/y1 (pixel edges),
        centroid_x/y, area_px (whole cell), ``<part>_area_px`` per part,
        ``*_um2`` with a pixel size, ``nc_ratio`` (nucleus / cytoplasm area,
        when both parts exist) and ``mean_<part>_c<k>``, the mean intensity of
        channel k in each part. Coordinates are those of the whole image.
    """
    read = image.read if hasattr(image, "read") else (lambda y0, y1, x0, x1: image[y0:y1, x0:x1])
    H, W = cells.shape
    n, K = int(cells.max(initial=0)), len(part_names)
    counts = np.zeros((n + 1) * K)
    sums: np.ndarray | None = None
    low = np.full((2, n + 1), np.iinfo(np.int64).max)
    high = np.full((2, n + 1), -1)
    coord_sums = np.zeros((2, n + 1))
    for y0 in range(0, H, block):
        for x0 in range(0, W, block):
            inside = cells[y0:y0 + block, x0:x0 + block] > 0
            if not inside.any():
                continue
            label = cells[y0:y0 + block, x0:x0 + block][inside].astype(np.int64)
            key = label * K + parts[y0:y0 + block, x0:x0 + block][inside].astype(np.int64)
            pixels = np.asarray(read(y0, min(y0 + block, H), x0, min(x0 + block, W)))[inside].astype(np.float64)
            if sums is None:
                sums = np.zeros((pixels.shape[-1], (n + 1) * K))
            counts += np.bincount(key, minlength=(n + 1) * K)
            for c in range(pixels.shape[-1]):
                sums[c] += np.bincount(key, weights=pixels[:, c], minlength=(n + 1) * K)
            for axis, coords in enumerate(np.nonzero(inside)):
                coords = coords + (y0, x0)[axis]
                np.minimum.at(low[axis], label, coords)
                np.maximum.at(high[axis], label, coords)
                coord_sums[axis] += np.bincount(label, weights=coords, minlength=n + 1)
    counts = counts.reshape(n + 1, K)
    ids = np.flatnonzero(counts.sum(axis=1) > 0)
    ids = ids[ids > 0]
    counts, area = counts[ids], counts[ids].sum(axis=1)
    table = pd.DataFrame({
        "image": name,
        "cell_id": ids,
        "class": [(classes or {}).get(int(i), "cell") for i in ids],
        "score": [(scores or {}).get(int(i), np.nan) for i in ids],
        "bbox_x0": low[1, ids], "bbox_y0": low[0, ids], "bbox_x1": high[1, ids] + 1, "bbox_y1": high[0, ids] + 1,
        "centroid_x": coord_sums[1, ids] / area if len(ids) else [], "centroid_y": coord_sums[0, ids] / area if len(ids) else [],
        "area_px": area.astype(np.int64),
    })
    for k, part_name in enumerate(part_names[1:], start=1):
        table[f"{part_name}_area_px"] = counts[:, k].astype(np.int64)
    if pixel_size:
        for column in [c for c in table.columns if c.endswith("area_px")]:
            table[column.replace("_px", "_um2")] = table[column] * pixel_size**2
    if "nucleus" in part_names and "cytoplasm" in part_names:
        cyto = table["cytoplasm_area_px"].astype(float)
        table["nc_ratio"] = table["nucleus_area_px"] / cyto.where(cyto > 0)
    # without any cell pixel, the channel count comes from the image (an ImageField always gives three)
    channels = sums.shape[0] if sums is not None else (image.shape[-1] if isinstance(image, np.ndarray) else 3)
    means = {f"mean_{part_name}_c{c}": (sums[c].reshape(n + 1, K)[ids, k] if sums is not None else np.zeros(0))
             / np.where(counts[:, k] > 0, counts[:, k], np.nan)
             for k, part_name in enumerate(part_names[1:], start=1) for c in range(channels)}
    return pd.concat([table, pd.DataFrame(means, index=table.index)], axis=1)


@dataclass
class PathResult:
    """The outcome of one file in :meth:`Predictor.predict_paths`: a prediction, or the error that stopped it."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None


#: Side of a tile in network pixels when no tile size is given: the image resized by the prediction scale
#: is cut into tiles of about this size.
NETWORK_TILE = 1024

#: A detection within this many network pixels of an inner tile edge counts as cut by the tile (see
#: :mod:`cellrcnn.tiles`): predicted masks stop a few pixels short of the edge that cuts them.
EDGE_MARGIN = 8


#: Scales tried by :meth:`Predictor.estimate_scale`, as factors of the training scale: 0.35x to 2.8x.
SCALE_LADDER = tuple(2 ** (k / 2) for k in range(-3, 4))

#: A median detected cell this many times larger or smaller than the trained cell size gets a warning.
SIZE_WARNING = 1.5


def scale_from_diameters(diameters: np.ndarray, cell_size: float) -> float | None:
    """The resize factor that brings the median of ``diameters`` (cell diameters in image pixels, float
    ``[N]``) to ``cell_size`` network pixels; None without any."""
    diameters = np.asarray(diameters, dtype=float)
    diameters = diameters[np.isfinite(diameters) & (diameters > 0)]
    return float(cell_size / np.median(diameters)) if len(diameters) else None


def prediction_scale(model: ModelConfig, scale: float | None = None, cell_diameter: float | None = None) -> float | None:
    """The factor by which images are resized for the network at prediction.

    Parameters
    ----------
    model : ModelConfig
        The model's config, with the scale it was trained at (``input_scale``, ``cell_size``).
    scale : float, optional
        Resize factor given by the user (image pixels to network pixels).
    cell_diameter : float, optional
        Typical cell diameter in the new images, in pixels: the factor makes
        cells as wide as the model saw them in training (``cell_size``).

    Returns
    -------
    float or None
        ``scale``; else ``cell_size / cell_diameter``; else the training
        scale; None (each image resized to ``min_size``) for models that did
        not record it.

    Raises
    ------
    ValueError
        Both given, a value not positive, or a cell diameter for a model without a recorded cell size.
    """
    if scale is not None and cell_diameter is not None:
        raise ValueError("give the scale or the cell diameter, not both")
    for label, value in (("scale", scale), ("cell diameter", cell_diameter)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"the {label} must be a positive number, got {value}")
    if scale is not None:
        return float(scale)
    if cell_diameter is not None:
        if model.cell_size is None:
            raise ValueError("this model does not record the cell size it was trained at (trained before it was "
                             "recorded); give the resize factor instead (scale=FACTOR)")
        return model.cell_size / cell_diameter
    return model.input_scale


class Predictor:
    """A trained model ready to predict images the way it was trained to read them.

    Images are resized by the scale the model was trained at (see
    :func:`prediction_scale`), and an image larger than one tile is cut into
    overlapping tiles whose labels are stitched into one field
    (:mod:`cellrcnn.tiles`).

    Parameters
    ----------
    model : torch.nn.Module
        A model built by :func:`cellrcnn.build_model`.
    config : Config
        The run's config (channels, normalisation, parts, training scale).
    device : str or torch.device
        Where the model runs.
    scale, cell_diameter : float, optional
        Override the training scale; see :func:`prediction_scale`.
        ``cell_diameter="auto"`` estimates the scale of each image from the
        cells the model finds in it (:meth:`estimate_scale`), as Cellpose's
        size model does: for images from another microscope.
    choice : CellChoice, optional
        The cells kept when a call does not say (default: score 0.5, the
        single-cell choice as the model was trained, every cell); see
        :mod:`cellrcnn.selection`.

    Examples
    --------
    >>> predictor = Predictor.from_checkpoint("runs/wbc/best.pt")
    >>> result = predictor.predict("cell_001.tif")
    >>> result.cells, result.parts, result.table
    >>> field = predictor.predict("field.tif", tile=1024, overlap=64, progress=True)
    """

    def __init__(self, model: torch.nn.Module, config: Config, device: str | torch.device = "cpu",
                 scale: float | None = None, cell_diameter: float | str | None = None,
                 choice: CellChoice | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.auto_scale = cell_diameter == "auto"
        if self.auto_scale:
            if scale is not None:
                raise ValueError("give the scale or the cell diameter, not both")
            if config.model.cell_size is None or config.model.input_scale is None:
                raise ValueError("this model does not record the cell size it was trained at (trained before it "
                                 "was recorded), so the scale cannot be estimated; give the cell diameter in pixels")
            cell_diameter = None
        elif isinstance(cell_diameter, str):
            raise ValueError(f"the cell diameter must be a number of pixels or 'auto', got {cell_diameter!r}")
        self.scale = prediction_scale(config.model, scale, cell_diameter)
        self._size_warned = False
        #: The cells kept when a call does not say (see :mod:`cellrcnn.selection`).
        self.default_choice = choice or CellChoice()
        self._told: set[bool] = set()  # single-cell choice logged, each way once

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", scale: float | None = None,
                        cell_diameter: float | str | None = None, choice: CellChoice | None = None) -> "Predictor":
        """Load a trained model: ``best.pt`` or ``last.pt`` of a run, a run folder (its ``best.pt``), or a
        bioimage.io package exported by cellrcnn (``model.zip``, see :func:`cellrcnn.share.export_model`).

        ``device="auto"`` picks CUDA when present. A package brings the choice
        of cells it records (score threshold, single-cell choice, ``max_cells``),
        so that the predictor gives what the package gives; ``choice`` replaces
        it. Reading a package needs ``bioimageio.spec``
        (``pip install 'cellrcnn[bioimageio]'``).
        """
        if is_package(path):
            package = read_package(path)
            model = build_model(package.config.model, load_weights=False)
            model.load_state_dict(package.state)
            config, choice = package.config, choice or package.choice
        else:
            model, config = model_from_checkpoint(run_checkpoint(path), map_location="cpu")
        return cls(model, config, resolve_device(device), scale, cell_diameter, choice)

    @property
    def parts(self) -> tuple[str, ...]:
        return self.config.model.parts

    def tiles(self, shape: tuple[int, int], tile: int | None = None, overlap: int | None = None,
              scale: float | None = None) -> list[Tile]:
        """The tiles an image of ``shape`` (H, W) is predicted in (one tile: the whole image).

        ``tile`` defaults to :data:`NETWORK_TILE` network pixels in image
        pixels; ``overlap`` to about one cell diameter (from the recorded cell
        size), at most a quarter of the tile. ``scale``: the image's resize
        factor (default: the predictor's).
        """
        scale = scale or self.scale or 1.0
        if tile is None:
            tile = max(64, int(round(NETWORK_TILE / scale)))
        if overlap is None:
            cell = self.config.model.cell_size
            overlap = int(math.ceil(cell / scale)) if cell else tile // 8
            overlap = min(overlap, tile // 4)
        return tile_grid(shape, tile, overlap)

    def _open(self, image, name: str | None = None) -> ImageField:
        if isinstance(image, ImageField):
            return image
        if isinstance(image, (str, os.PathLike)):
            return open_field(image, self.config.data)
        return field_from_array(np.asarray(image), self.config.data, name or "image")

    def estimate_scale(self, image, name: str | None = None, score_threshold: float = 0.5) -> float:
        """The resize factor at which the cells of ``image`` look the size the model was trained on.

        The model runs at each scale of :data:`SCALE_LADDER` (factors of the
        training scale) on the image, or on its central window of one network
        tile for a large field. Each run's detections imply a scale: the one that
        brings their median diameter to the trained cell size. The scale kept is
        that of the run whose best detection scores highest (at a wrong scale
        cells look unlike any the model saw, and so score lower), refined once
        by a last run at the scale its detections imply.

        Returns the training scale when no scale finds a cell.
        """
        field = self._open(image, name)
        cell_size, base = self.config.model.cell_size, self.config.model.input_scale
        found = []
        for factor in SCALE_LADDER:
            scale = base * factor
            detections = self._detect(field, scale, score_threshold)
            if len(detections["scores"]):
                found.append((float(detections["scores"].max()), scale, detections))
        if not found:
            logger.warning("%s: no cell found at any scale from %.2g to %.2g; predicting at the training scale",
                           field.name, base * SCALE_LADDER[0], base * SCALE_LADDER[-1])
            return base
        _, scale, detections = max(found, key=lambda f: (f[0], -abs(math.log(f[1] / base))))
        implied = scale_from_diameters(detections["diameters"], cell_size)
        refined = self._detect(field, implied, score_threshold)
        if len(refined["scores"]):
            implied = scale_from_diameters(refined["diameters"], cell_size)
        logger.debug("%s: estimated scale %.3g (training scale %.3g)", field.name, implied, base)
        return implied

    def _detect(self, field: ImageField, scale: float, score_threshold: float) -> dict[str, np.ndarray]:
        """Scores and diameters (image pixels) of the detections at ``scale`` in the centre of ``field``."""
        side = max(64, int(round(NETWORK_TILE / scale)))
        H, W = field.shape
        y0, x0 = max(0, (H - side) // 2), max(0, (W - side) // 2)
        window = field.read(y0, min(H, y0 + side), x0, min(W, x0 + side))
        output = self._forward([window], scale, score_threshold)[0]
        keep = output["scores"] >= score_threshold
        boxes = output["boxes"][keep].numpy()
        return {"scores": output["scores"][keep].numpy(),
                "diameters": np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))}

    def _scale_for(self, field: ImageField, score_threshold: float) -> float | None:
        """The resize factor of ``field``: estimated in it with ``cell_diameter="auto"``, else the predictor's."""
        return self.estimate_scale(field, score_threshold=score_threshold) if self.auto_scale else self.scale

    def _forward(self, arrays: list[np.ndarray], scale: float | None, score_threshold: float) -> list[dict]:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).to(self.device) for a in arrays]
        return [{k: v.cpu() for k, v in out.items()}
                for out in predict_labels(self.model, tensors, scale, score_threshold)]

    def _stitch(self, stitcher: Stitcher, tile: Tile, output: dict) -> None:
        order = output["order"]  # label k is detection order[k - 1]
        stitcher.add(tile, output["cells"].numpy(), output["parts"].numpy(), output["scores"][order].tolist(),
                     output["labels"][order].tolist())

    def choice(self, score_threshold: float | None = None, largest: bool | None = None,
               max_cells: int | None = None) -> CellChoice:
        """The predictor's :class:`~cellrcnn.selection.CellChoice` with the values given (not None) instead."""
        return self.default_choice.replace(score_threshold=score_threshold, largest=largest, max_cells=max_cells)

    def predict_batch(self, images: list, names: list[str] | None = None, score_threshold: float | None = None,
                      largest: bool | None = None, max_cells: int | None = None,
                      pixel_size: float | None = None) -> list[Prediction]:
        """Predict several images (paths or arrays) whole, in one forward pass; see :meth:`predict`."""
        choice = self.choice(score_threshold, largest, max_cells)
        fields = [self._open(img, n) for img, n in zip(images, names or [None] * len(images))]
        if self.auto_scale:  # a scale per image: one image per forward pass
            return [self.predict(f, pixel_size=pixel_size, **choice.as_kwargs()) for f in fields]
        return self._whole(fields, self.scale, choice, pixel_size)

    def _whole(self, fields: list[ImageField], scale: float | None, choice: CellChoice,
               pixel_size: float | None) -> list[Prediction]:
        """Images of one tile each, in one forward pass at ``scale``."""
        arrays = [f.read(0, f.shape[0], 0, f.shape[1]) for f in fields]
        predictions = []
        for field, array, output in zip(fields, arrays, self._forward(arrays, scale, choice.score_threshold)):
            stitcher = Stitcher(field.shape)
            self._stitch(stitcher, Tile(0, field.shape[0], 0, field.shape[1]), output)
            predictions.append(self._finish(field.name, array, stitcher, choice, pixel_size, scale, tiled=False))
        return predictions

    def _steps(self, field: ImageField, choice: CellChoice, pixel_size: float | None, tile: int | None,
               overlap: int | None, batch_size: int,
               tiled: bool | None = None) -> Generator[tuple[int, int], None, Prediction]:
        """The one prediction path of an image: yields ``(tiles done, tiles in all)``, returns the Prediction.

        ``tiled`` None: in tiles when the image is larger than one tile; True:
        through the stitcher even for one tile (the image is then not kept).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        scale = self._scale_for(field, choice.score_threshold)
        tiles = self.tiles(field.shape, tile, overlap, scale)
        if not (len(tiles) > 1 if tiled is None else tiled):
            yield 0, 1
            prediction = self._whole([field], scale, choice, pixel_size)[0]
            yield 1, 1
            return prediction
        stitcher = Stitcher(field.shape, edge=int(math.ceil(EDGE_MARGIN / (scale or 1.0))),
                            core=grid_overlap(tiles) // 2)
        for start in range(0, len(tiles), batch_size):
            batch = tiles[start:start + batch_size]
            outputs = self._forward([field.read(t.y0, t.y1, t.x0, t.x1) for t in batch], scale,
                                    choice.score_threshold)
            for t, output in zip(batch, outputs):
                self._stitch(stitcher, t, output)
            yield start + len(batch), len(tiles)
        return self._finish(field.name, field, stitcher, choice, pixel_size, scale, tiled=len(tiles) > 1)

    @staticmethod
    def _drain(steps: Generator[tuple[int, int], None, Prediction], name: str, progress: bool) -> Prediction:
        """Run :meth:`_steps` to its end, with a progress bar over the tiles of a large image."""
        bar = None
        try:
            while True:
                done, total = next(steps)
                if progress and total > 1:
                    bar = bar or tqdm(total=total, desc=name, unit="tile", leave=False)
                    bar.update(done - bar.n)
        except StopIteration as end:
            return end.value
        finally:
            if bar is not None:
                bar.close()

    def predict_tiled(self, image, name: str | None = None, tile: int | None = None, overlap: int | None = None,
                      batch_size: int = 1, progress: bool = False, score_threshold: float | None = None,
                      largest: bool | None = None, max_cells: int | None = None,
                      pixel_size: float | None = None) -> Prediction:
        """Predict an image in overlapping tiles stitched into one field; see :meth:`predict`.

        Only the label images and one batch of tiles are held: an uncompressed
        TIFF is read window by window (:func:`cellrcnn.io.open_field`), and the
        prediction's ``image`` is None.
        """
        field = self._open(image, name)
        steps = self._steps(field, self.choice(score_threshold, largest, max_cells), pixel_size, tile, overlap,
                            batch_size, tiled=True)
        return self._drain(steps, field.name, progress)

    def predict_steps(self, image, name: str | None = None, score_threshold: float | None = None,
                      largest: bool | None = None, max_cells: int | None = None, pixel_size: float | None = None,
                      tile: int | None = None, overlap: int | None = None,
                      batch_size: int = 1) -> Generator[tuple[int, int], None, Prediction]:
        """:meth:`predict` one batch of tiles at a time, for a GUI that shows progress and can stop.

        Yields ``(tiles done, tiles in all)`` after each batch (an image of one
        tile: ``(0, 1)`` before and ``(1, 1)`` after) and returns the
        :class:`Prediction` (``StopIteration.value``; ``yield from`` gives it).
        Closing the generator between batches stops the work. Arguments as in
        :meth:`predict`, which drains this generator.

        Examples
        --------
        >>> steps = predictor.predict_steps("field.tif")
        >>> for done, total in steps: ...     # napari's thread_worker yields these
        """
        field = self._open(image, name)
        return (yield from self._steps(field, self.choice(score_threshold, largest, max_cells), pixel_size, tile,
                                       overlap, batch_size))

    def predict(self, image, name: str | None = None, score_threshold: float | None = None,
                largest: bool | None = None, max_cells: int | None = None, pixel_size: float | None = None,
                tile: int | None = None, overlap: int | None = None, batch_size: int = 1,
                progress: bool = False) -> Prediction:
        """Predict one image, in tiles when it is larger than one tile.

        Which cells are kept follows one rule (:mod:`cellrcnn.selection`); the
        three options below default to the predictor's ``default_choice``
        (0.5, as the model was trained, every cell; a package's own choice
        when loaded from one).

        Parameters
        ----------
        image : path, np.ndarray or ImageField
            A file (read as in training: the run's channels and normalisation)
            or an array ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``.
        name : str, optional
            Name for the table (default: the file stem, or "image").
        score_threshold : float, optional
            Minimum detection score.
        largest : bool, optional
            Keep only the largest complete cell, as ``--targets largest`` in
            training. None: as the model was trained: the largest when it was
            trained on single-cell crops (``ModelConfig.single_cell``) and the
            image is like them (whole, not much larger); else every cell.
        max_cells : int, optional
            Keep at most this many cells, the best-scoring ones.
        pixel_size : float, optional
            Micrometres per pixel, for areas in square micrometres.
        tile, overlap : int, optional
            Tile side and overlap in image pixels (see :meth:`tiles`).
        batch_size : int
            Tiles per forward pass.
        progress : bool
            Show a progress bar over the tiles.
        """
        field = self._open(image, name)
        steps = self.predict_steps(field, None, score_threshold, largest, max_cells, pixel_size, tile, overlap,
                                   batch_size)
        return self._drain(steps, field.name, progress)

    def predict_paths(self, paths: list, batch_size: int = 1, tile: int | None = None, overlap: int | None = None,
                      progress: bool = False, **options) -> Iterator[PathResult]:
        """Predict image files, one result per file, in order.

        Images that fit in one tile are predicted ``batch_size`` at a time;
        larger ones in tiles, ``batch_size`` tiles at a time. A file that cannot
        be read costs only itself: its result carries the error instead of a
        prediction, and the rest go on.

        Parameters
        ----------
        paths : list of path
            Image files (see :func:`cellrcnn.io.list_images`).
        batch_size : int
            Images (or tiles) per forward pass.
        tile, overlap : int, optional
            As in :meth:`predict`.
        progress : bool
            A progress bar over the tiles of large images.
        **options
            Passed to :meth:`predict` (``score_threshold``, ``largest``,
            ``max_cells``, ``pixel_size``).

        Yields
        ------
        PathResult
            ``path``, and ``prediction`` or ``error`` (one line naming the file).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        pending: list[tuple[Path, ImageField]] = []
        pixel_size = options.pop("pixel_size", None)
        choice = self.choice(**options)
        options = {"pixel_size": pixel_size, **choice.as_kwargs()}

        def flush() -> Iterator[PathResult]:
            if pending:
                predictions = self.predict_batch([f for _, f in pending], **options)
                yield from (PathResult(path, prediction=p) for (path, _), p in zip(pending, predictions))
                pending.clear()

        for path in map(Path, paths):
            try:
                field = open_field(path, self.config.data)
                if self.auto_scale:  # each file at its own scale
                    yield PathResult(path, prediction=self.predict(field, tile=tile, overlap=overlap,
                                                                   batch_size=batch_size, progress=progress,
                                                                   **options))
                    continue
                if len(self.tiles(field.shape, tile, overlap)) > 1:
                    yield from flush()
                    steps = self._steps(field, choice, pixel_size, tile, overlap, batch_size)
                    yield PathResult(path, prediction=self._drain(steps, field.name, progress))
                    continue
            except DataError as err:
                logger.error("failed: %s", err)
                yield from flush()
                yield PathResult(path, error=str(err))
                continue
            pending.append((path, field))
            if len(pending) == batch_size:
                yield from flush()
        yield from flush()

    def _check_size(self, name: str, table: pd.DataFrame, scale: float | None) -> None:
        """Warn once when the cells found are much larger or smaller than those the model was trained on:
        the scale is then likely wrong (another microscope), and so are many of the cells."""
        cell = self.config.model.cell_size
        if self.auto_scale or self._size_warned or cell is None or scale is None or table.empty:
            return
        # measured as training measures cell_size: the square root of the box area, in network pixels
        sides = np.sqrt((table["bbox_x1"] - table["bbox_x0"]) * (table["bbox_y1"] - table["bbox_y0"]))
        found = float(np.median(sides)) * scale
        if not 1 / SIZE_WARNING <= found / cell <= SIZE_WARNING:
            self._size_warned = True
            logger.warning("%s: the cells found span about %.0f network pixels, %.1fx the %.0f the model was "
                           "trained on: these images may have another magnification. Give the cell diameter "
                           "(cell_diameter='auto', or cell_diameter=PIXELS) to resize them",
                           name, found, found / cell, cell)

    def _finish(self, name: str, image, stitcher: Stitcher, choice: CellChoice, pixel_size: float | None,
                scale: float | None, tiled: bool) -> Prediction:
        """Labels, the cells kept by the rule of :mod:`cellrcnn.selection`, and their table."""
        field = stitcher.finish()
        cells, parts, scores, classes = field["cells"], field["parts"], field["scores"], field["classes"]
        largest = keeps_largest(choice, self.config.model, cells.shape, scale, tiled)
        self._tell_single_cell(choice, largest, name)
        ids = np.arange(1, len(scores) + 1)
        keep = kept_cells(scores, field["areas"], ~np.isin(ids, border_labels(cells)), choice.score_threshold,
                          largest, choice.max_cells) + 1
        if len(keep) < len(scores):
            lut = np.zeros(len(scores) + 1, dtype=cells.dtype)
            lut[keep] = np.arange(1, len(keep) + 1)
            relabel(cells, lut, parts)
            scores, classes = scores[keep - 1], classes[keep - 1]
        class_names = self.config.data.class_names
        ids = range(1, len(scores) + 1)
        table = measure_cells(cells, parts, image, self.parts, dict(zip(ids, map(float, scores))),
                              {i: class_names[min(int(c), len(class_names)) - 1] for i, c in zip(ids, classes)},
                              pixel_size, name)
        self._check_size(name, table, scale)
        return Prediction(name=name, image=image if isinstance(image, np.ndarray) else None, cells=cells, parts=parts,
                          table=table)

    def _tell_single_cell(self, choice: CellChoice, largest: bool, name: str) -> None:
        """Log, once each way, whether a single-cell model's choice of one cell applies (``largest=None``)."""
        if choice.largest is not None or not self.config.model.single_cell or largest in self._told:
            return
        self._told.add(largest)
        if largest:
            logger.info("%s: the model was trained on crops of one cell: keeping the largest complete cell of each "
                        "such image (largest=False: every cell)", name)
        else:
            logger.info("%s: predicted in tiles or larger than the model's single-cell training crops: keeping "
                        "every cell (largest=True: only the largest)", name)
