"""Prediction: a trained model applied to images, giving label images and a table."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generator, Iterator

import numpy as np
import pandas as pd
import torch

from ..config.tree import Config
from ..io.calibration import PixelSize, checked_pixel_size
from ..io.fields import ImageField, field_from_array, open_field
from ..io.files import DataError, image_stem
from ..modeling.build import build_model
from ..modeling.checkpoint import load_model_state, model_from_checkpoint, run_checkpoint
from ..modeling.size_model import window_style
from ..modeling.transform import predict_labels
from ..utils.progress import progress as progress_bar
from ..utils.runtime import resolve_device
from .measure import Prediction, measure_cells, whole_masks
from .package import is_package, read_package
from .scale import prediction_scale, scale_from_ladder, warn_off_size
from .selection import CellChoice, border_labels, cell_boxes, cell_sides, keeps_largest, kept_cells, nucleated
from .tta import VIEWS, from_view, merge_views, to_view
from .tiles import Stitcher, Tile, grid_overlap, relabel, tile_grid

__all__ = ["PathResult", "Predictor", "NETWORK_TILE", "EDGE_MARGIN", "MIN_SIDE"]

logger = logging.getLogger(__name__)


@dataclass
class PathResult:
    """The outcome of one file in :meth:`Predictor.predict_paths`: a prediction, or the error that stopped it."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None


#: Side of a tile in network pixels when no tile size is given: the image resized by the prediction scale
#: is cut into tiles of about this size.
NETWORK_TILE = 1024

#: The shortest image side, in network pixels, that is predicted: a smaller image cannot hold a cell.
MIN_SIDE = 8

#: A detection within this many network pixels of an inner tile edge counts as cut by the tile (see
#: :mod:`cellrcnn.inference.tiles`): predicted masks stop a few pixels short of the edge that cuts them.
EDGE_MARGIN = 8


class Predictor:
    """A trained model ready to predict images the way it was trained to read them.

    Images are resized by the scale the model was trained at (see
    :func:`prediction_scale`), and an image larger than one tile is cut into
    overlapping tiles whose labels are stitched into one field
    (:mod:`cellrcnn.inference.tiles`).

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
        :mod:`cellrcnn.inference.selection`.

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
        #: A scale or cell diameter was given: it wins over the images' pixel sizes.
        self.scale_given = scale is not None or cell_diameter is not None
        self._physics_told: set[float] = set()
        self._size_warned = False
        #: The cells kept when a call does not say (see :mod:`cellrcnn.inference.selection`).
        self.default_choice = choice or CellChoice()
        #: Test-time augmentation: an image of one tile is predicted in its 8 flips and 90-degree turns, merged
        #: per cell (:mod:`cellrcnn.inference.tta`; 8 times the compute). Tiled fields are predicted once.
        self.tta = False
        self._told: set[bool] = set()  # single-cell choice logged, each way once

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", scale: float | None = None,
                        cell_diameter: float | str | None = None, choice: CellChoice | None = None,
                        projection: str | None = None, max_pixels: int | None = None,
                        pixel_size: float | None = None) -> "Predictor":
        """Load a trained model: ``best.pt`` or ``last.pt`` of a run, a run folder (its ``best.pt``), or a
        bioimage.io package exported by cellrcnn (``model.zip``, see :func:`cellrcnn.export.bioimage.export_model`).

        ``device="auto"`` picks CUDA when present. A package brings the choice
        of cells it records (score threshold, single-cell choice, ``max_cells``),
        so that the predictor gives what the package gives; ``choice`` replaces
        it. Reading a package needs ``bioimageio.spec``
        (``pip install 'cellrcnn[bioimageio]'``). ``projection`` (``"max"`` or
        ``"none"``) replaces the model's ``data.projection`` for Z-stacks and time series; ``max_pixels``
        its ``data.max_pixels``, the largest image read whole; ``pixel_size`` (µm) is taken for every
        image instead of what its file states.
        """
        if is_package(path):
            package = read_package(path)
            model = build_model(package.config.model, load_weights=False)
            load_model_state(model, package.state, path, package.config.model.backbone)
            config, choice = package.config, choice or package.choice
        else:
            model, config = model_from_checkpoint(run_checkpoint(path), map_location="cpu")
        given = {"projection": projection, "max_pixels": max_pixels, "pixel_size": pixel_size}
        config = replace(config, data=replace(config.data, **{k: v for k, v in given.items() if v is not None}))
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
            field = image
        elif isinstance(image, (str, os.PathLike)):
            field = open_field(image, self.config.data)
        else:
            field = field_from_array(np.asarray(image), self.config.data, name or "image")
        return self._large_enough(field)

    def _large_enough(self, field: ImageField) -> ImageField:
        """``field``, refused with a :class:`DataError` when it is too small, at the model's scale, to hold a cell
        (a 1-pixel row would otherwise be resized to nothing)."""
        scale = self.scale or 1.0
        if min(field.shape) * scale < MIN_SIDE:
            at = f" at the scale the model reads images ({scale:.3g})" if scale != 1.0 else ""
            raise DataError(f"{field.path or field.name}: {field.shape[0]} x {field.shape[1]} pixels is too small to hold a "
                            f"cell{at}; images need at least {math.ceil(MIN_SIDE / scale)} pixels a side: remove it "
                            f"or choose the images with data.image_glob")
        return field

    def estimate_scale(self, image, name: str | None = None, score_threshold: float = 0.5) -> float:
        """The resize factor at which the cells of ``image`` look the size the model was trained on.

        A model whose training fitted its size model (:mod:`cellrcnn.modeling.size_model`) reads the cell
        size from the style of the image's central window, in one pass of the backbone, as Cellpose's size
        model does. Older models run on the image (its central network tile for a large field) at each scale
        of the ladder, as :func:`~cellrcnn.inference.scale.scale_from_ladder` tells; the training scale is
        returned when no scale finds a cell.
        """
        field = self._open(image, name)
        model = self.config.model
        size_model = getattr(self.model, "size_model", None)
        if size_model is not None and size_model.is_fitted:  # the cell size read from the image's style
            diameter = size_model.diameter(window_style(self.model, field, model.input_scale, self.device))
            scale = model.input_scale * model.cell_size / diameter
            logger.debug("%s: the size model gives cells of %.0f network pixels at the training scale: scale %.3g",
                         field.name, diameter, scale)
            return scale
        return scale_from_ladder(lambda scale: self._detect(field, scale, score_threshold),
                                 model.input_scale, model.cell_size, field.name)

    def _detect(self, field: ImageField, scale: float, score_threshold: float) -> dict[str, np.ndarray]:
        """Scores and diameters (image pixels) of the detections at ``scale`` in the centre of ``field``."""
        side = max(64, int(round(NETWORK_TILE / scale)))
        H, W = field.shape
        y0, x0 = max(0, (H - side) // 2), max(0, (W - side) // 2)
        window = field.read(y0, min(H, y0 + side), x0, min(W, x0 + side))
        output = self._forward([window], scale, score_threshold)[0]
        keep = (output["scores"] >= score_threshold).numpy()
        # Cells with a nucleus only, when the model predicts one: detections without (red blood cells, rings of
        # them) would otherwise set the scale (issue 31). Label k of the label image is detection order[k - 1].
        order = output["order"].numpy()
        has = nucleated(output["cells"].numpy(), output["parts"].numpy(), len(order), self.parts)
        if has is not None and (keep[order] & has).any():
            with_nucleus = np.zeros_like(keep)
            with_nucleus[order[has]] = True
            keep &= with_nucleus
        boxes = output["boxes"][keep].numpy()
        return {"scores": output["scores"].numpy()[keep],
                "diameters": np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))}

    def scale_for_pixel_size(self, pixel_size: PixelSize | None, name: str = "image") -> float | None:
        """The resize factor of an image of ``pixel_size``: the training scale times the ratio of its pixel size
        to the training images' (``model.pixel_size``), so that a micrometre spans as many network pixels as in
        training; the predictor's scale when either size is unknown or a scale or cell diameter was given."""
        model_size = self.config.model.pixel_size
        if self.scale_given or pixel_size is None or model_size is None or self.scale is None:
            return self.scale
        ratio = pixel_size.side / model_size
        if round(ratio, 3) not in self._physics_told:  # once for each ratio met
            self._physics_told.add(round(ratio, 3))
            logger.info("%s: %s, the model's images %.4g µm: resized by %.3g for the model (give --scale or "
                        "--cell-diameter to choose otherwise)", name, pixel_size, model_size, self.scale * ratio)
        return self.scale * ratio

    def _scale_for(self, field: ImageField, score_threshold: float) -> float | None:
        """The resize factor of ``field``: estimated in it with ``cell_diameter="auto"``, else from its pixel size
        (:meth:`scale_for_pixel_size`)."""
        if self.auto_scale:
            return self.estimate_scale(field, score_threshold=score_threshold)
        return self.scale_for_pixel_size(field.pixel_size, field.name)

    @staticmethod
    def _calibrate(field: ImageField, pixel_size: float | PixelSize | None) -> ImageField:
        """``field`` with ``pixel_size`` (µm, given to a call) instead of what its file states."""
        if pixel_size is not None:
            field.pixel_size = pixel_size if isinstance(pixel_size, PixelSize) else \
                checked_pixel_size(pixel_size, pixel_size, "given", f"{field.name}: pixel_size")
        return field

    def _forward(self, arrays: list[np.ndarray], scale: float | None, score_threshold: float) -> list[dict]:
        """The network's output for each array, in order. Arrays of one shape go through together: a batch pads
        its images to the largest, and the padding would enter the normalisation (group norm) and the borders'
        receptive fields, so a prediction would depend on what else is in its batch."""
        outputs: list[dict] = [{} for _ in arrays]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, array in enumerate(arrays):
            groups.setdefault(array.shape, []).append(i)
        for members in groups.values():
            tensors = [torch.from_numpy(np.ascontiguousarray(arrays[i])).permute(2, 0, 1).to(self.device)
                       for i in members]
            for i, out in zip(members, predict_labels(self.model, tensors, scale, score_threshold)):
                outputs[i] = {k: v.cpu() for k, v in out.items()}
        return outputs

    def _stitch(self, stitcher: Stitcher, tile: Tile, output: dict) -> None:
        order = output["order"]  # label k is detection order[k - 1]
        stitcher.add(tile, output["cells"].numpy(), output["parts"].numpy(), output["scores"][order].tolist(),
                     output["labels"][order].tolist())

    def choice(self, score_threshold: float | None = None, largest: bool | None = None,
               max_cells: int | None = None, single_rule: str | None = None) -> CellChoice:
        """The predictor's :class:`~cellrcnn.inference.selection.CellChoice` with the values given (not None) instead."""
        return self.default_choice.replace(score_threshold=score_threshold, largest=largest, max_cells=max_cells,
                                           single_rule=single_rule)

    def predict_batch(self, images: list, names: list[str] | None = None, score_threshold: float | None = None,
                      largest: bool | None = None, max_cells: int | None = None,
                      pixel_size: float | None = None, *, single_rule: str | None = None) -> list[Prediction]:
        """Predict several images (paths or arrays) whole, in one forward pass; see :meth:`predict`."""
        choice = self.choice(score_threshold, largest, max_cells, single_rule)
        fields = [self._calibrate(self._open(img, n), pixel_size) for img, n in zip(images, names or [None] * len(images))]
        if self.auto_scale:  # a scale per image: one image per forward pass
            return [self.predict(f, **choice.as_kwargs()) for f in fields]
        return self._whole(fields, [self._scale_for(f, choice.score_threshold) for f in fields], choice)

    def _whole(self, fields: list[ImageField], scales: list[float | None], choice: CellChoice) -> list[Prediction]:
        """Images of one tile each, those of one scale in one forward pass."""
        arrays = [f.read(0, f.shape[0], 0, f.shape[1]) for f in fields]
        if self.tta:
            return [self._views(field, array, scale, choice) for field, array, scale in zip(fields, arrays, scales)]
        outputs: list[dict] = [{} for _ in fields]
        for scale in dict.fromkeys(scales):
            members = [i for i, s in enumerate(scales) if s == scale]
            for i, output in zip(members, self._forward([arrays[i] for i in members], scale, choice.score_threshold)):
                outputs[i] = output
        predictions = []
        for field, array, output, scale in zip(fields, arrays, outputs, scales):
            stitcher = Stitcher(field.shape)
            self._stitch(stitcher, Tile(0, field.shape[0], 0, field.shape[1]), output)
            prediction = self._finish(field, array, stitcher.finish(), choice, scale, tiled=False)
            predictions.append(replace(prediction, masks=whole_masks(prediction.cells, output)))
        return predictions

    def _views(self, field: ImageField, array: np.ndarray, scale: float | None, choice: CellChoice) -> Prediction:
        """One image of one tile predicted in each of its :data:`~cellrcnn.inference.tta.VIEWS`, merged per cell
        (``tta``); cells are then kept by the rule, as for one view. Whole masks are the label image's."""
        views = []
        for view, output in zip(VIEWS, self._forward([to_view(array, v) for v in VIEWS], scale,
                                                       choice.score_threshold)):
            shape = tuple(output["cells"].shape[-2:])
            stitcher = Stitcher(shape)
            self._stitch(stitcher, Tile(0, shape[0], 0, shape[1]), output)
            found = stitcher.finish()
            views.append({"cells": from_view(found["cells"], view), "parts": from_view(found["parts"], view),
                          "scores": found["scores"], "classes": found["classes"]})
        return self._finish(field, array, merge_views(views), choice, scale, tiled=False)

    def _steps(self, field: ImageField, choice: CellChoice, pixel_size: float | None, tile: int | None,
               overlap: int | None, batch_size: int,
               tiled: bool | None = None) -> Generator[tuple[int, int], None, Prediction]:
        """The one prediction path of an image: yields ``(tiles done, tiles in all)``, returns the Prediction.

        ``tiled`` None: in tiles when the image is larger than one tile; True:
        through the stitcher even for one tile (the image is then not kept).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._calibrate(field, pixel_size)
        scale = self._scale_for(field, choice.score_threshold)
        tiles = self.tiles(field.shape, tile, overlap, scale)
        if not (len(tiles) > 1 if tiled is None else tiled):
            yield 0, 1
            prediction = self._whole([field], [scale], choice)[0]
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
        return self._finish(field, field, stitcher.finish(), choice, scale, tiled=len(tiles) > 1)

    @staticmethod
    def _drain(steps: Generator[tuple[int, int], None, Prediction], name: str, progress: bool) -> Prediction:
        """Run :meth:`_steps` to its end, with a progress bar over the tiles of a large image."""
        bar = None
        try:
            while True:
                done, total = next(steps)
                if progress and total > 1:
                    bar = bar or progress_bar(total=total, desc=name, unit="tile", leave=False)
                    bar.update(done - bar.n)
        except StopIteration as end:
            return end.value
        finally:
            if bar is not None:
                bar.close()

    def predict_tiled(self, image, name: str | None = None, tile: int | None = None, overlap: int | None = None,
                      batch_size: int = 1, progress: bool = False, score_threshold: float | None = None,
                      largest: bool | None = None, max_cells: int | None = None,
                      pixel_size: float | None = None, *, single_rule: str | None = None) -> Prediction:
        """Predict an image in overlapping tiles stitched into one field; see :meth:`predict`.

        Only the label images and one batch of tiles are held: an uncompressed
        TIFF is read window by window (:func:`cellrcnn.io.open_field`), and the
        prediction's ``image`` is None.
        """
        field = self._open(image, name)
        steps = self._steps(field, self.choice(score_threshold, largest, max_cells, single_rule), pixel_size, tile,
                            overlap, batch_size, tiled=True)
        return self._drain(steps, field.name, progress)

    def predict_steps(self, image, name: str | None = None, score_threshold: float | None = None,
                      largest: bool | None = None, max_cells: int | None = None, pixel_size: float | None = None,
                      tile: int | None = None, overlap: int | None = None,
                      batch_size: int = 1, *, single_rule: str | None = None
                      ) -> Generator[tuple[int, int], None, Prediction]:
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
        return (yield from self._steps(field, self.choice(score_threshold, largest, max_cells, single_rule),
                                       pixel_size, tile, overlap, batch_size))

    def predict(self, image, name: str | None = None, score_threshold: float | None = None,
                largest: bool | None = None, max_cells: int | None = None, pixel_size: float | None = None,
                tile: int | None = None, overlap: int | None = None, batch_size: int = 1,
                progress: bool = False, *, single_rule: str | None = None) -> Prediction:
        """Predict one image, in tiles when it is larger than one tile.

        Which cells are kept follows one rule (:mod:`cellrcnn.inference.selection`); the
        choice options below default to the predictor's ``default_choice``
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
            Micrometres per pixel, instead of what the file states
            (:func:`cellrcnn.io.calibration.pixel_size_of`). With a pixel size
            the table has µm and µm² beside pixels, and an image of a model
            that records its own (``model.pixel_size``) is resized by their
            ratio unless the predictor was given a scale or cell diameter.
        tile, overlap : int, optional
            Tile side and overlap in image pixels (see :meth:`tiles`).
        batch_size : int
            Tiles per forward pass.
        progress : bool
            Show a progress bar over the tiles.
        single_rule : str, optional
            How the single-cell choice picks its cell: ``"nucleated"`` (the
            default: the largest complete cell with a nucleus), ``"largest"`` or
            ``"score"`` (:mod:`cellrcnn.inference.selection`).
        """
        field = self._open(image, name)
        steps = self.predict_steps(field, None, score_threshold, largest, max_cells, pixel_size, tile, overlap,
                                   batch_size, single_rule=single_rule)
        return self._drain(steps, field.name, progress)

    def predict_paths(self, paths: list, batch_size: int = 1, tile: int | None = None, overlap: int | None = None,
                      progress: bool = False, names: list[str] | None = None, **options) -> Iterator[PathResult]:
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
        names : list of str, optional
            The name of each file's prediction (its ``name`` and the table's
            ``image`` column); None: the file stems (see
            :func:`cellrcnn.io.folders.output_names` for names that never collide).
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
        options = choice.as_kwargs()

        def flush() -> Iterator[PathResult]:
            if pending:
                predictions = self.predict_batch([f for _, f in pending], **options)
                yield from (PathResult(path, prediction=p) for (path, _), p in zip(pending, predictions))
                pending.clear()

        paths = [Path(p) for p in paths]
        if names is not None and len(names) != len(paths):
            raise ValueError(f"{len(names)} names for {len(paths)} paths")
        for path, name in zip(paths, names or [image_stem(p) for p in paths]):
            try:
                field = self._calibrate(self._large_enough(open_field(path, self.config.data)), pixel_size)
                field.name = name
                if self.auto_scale:  # each file at its own scale
                    yield PathResult(path, prediction=self.predict(field, tile=tile, overlap=overlap,
                                                                   batch_size=batch_size, progress=progress,
                                                                   **options))
                    continue
                if len(self.tiles(field.shape, tile, overlap, self._scale_for(field, choice.score_threshold))) > 1:
                    yield from flush()
                    steps = self._steps(field, choice, None, tile, overlap, batch_size)
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
        """Warn once when the cells found are much larger or smaller than those the model was trained on."""
        if not (self.auto_scale or self._size_warned):
            self._size_warned = warn_off_size(name, table, scale, self.config.model.cell_size)

    def _finish(self, source: ImageField, image, field: dict, choice: CellChoice, scale: float | None,
                tiled: bool) -> Prediction:
        """Labels, the cells kept by the rule of :mod:`cellrcnn.inference.selection`, and their table, from the
        labels of the whole image (``field``: :meth:`~cellrcnn.inference.tiles.Stitcher.finish`'s dict) of
        ``source``, measured in its pixel size."""
        name, pixel_size = source.name, source.pixel_size
        cells, parts, scores, classes = field["cells"], field["parts"], field["scores"], field["classes"]
        judged = not tiled and choice.largest is None and self.config.model.single_cell
        nucleus = nucleated(cells, parts, len(scores), self.parts) if judged or choice.largest else None
        sides = cell_sides(cell_boxes(cells, len(scores)), cells.shape) if judged else None
        largest = keeps_largest(choice, self.config.model, cells.shape, scale, tiled, sides, nucleus)
        self._tell_single_cell(choice, largest, name)
        ids = np.arange(1, len(scores) + 1)
        nucleus = nucleus if largest else None
        keep = kept_cells(scores, field["areas"], ~np.isin(ids, border_labels(cells)), choice.score_threshold,
                          largest, choice.max_cells, nucleus, choice.single_rule) + 1
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
                          table=table, pixel_size=pixel_size)

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
