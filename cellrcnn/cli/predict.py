"""cellrcnn-predict: label images, folders and globs, sharded under torchrun."""

from __future__ import annotations

import argparse
import glob
import logging
import os
from pathlib import Path

from ..config.fields import MAX_PIXEL_UM, MIN_PIXEL_UM, PROJECTIONS
from ..io.coco import PREDICTION_FILE as COCO_FILE
from .common import (TTA_HELP, command, HelpFormatter, Parser, add_cell_arguments, add_scale_arguments, cell_choice,
                     check_out_folder, check_scale_arguments, setup_logging)

__all__ = ["predict_main", "PIECES"]

#: The hidden folder of a prediction's pieces: each finished image's rows of cells.csv (and its COCO entries),
#: written when the image is done, so that an interrupted run resumes (--resume) where it stopped.
PIECES = ".cellrcnn-pieces"


logger = logging.getLogger(__name__)


def _expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Image paths, folders and glob patterns (quoted, as the shell leaves them) as paths; and what matched nothing."""
    paths, missing = [], []
    for text in inputs:
        if Path(text).exists():
            paths.append(Path(text))
        elif glob.has_magic(text):
            matched = sorted(Path(p) for p in glob.glob(text))
            paths += matched
            if not matched:
                missing.append(text)
        else:
            missing.append(text)
    return paths, missing


@command
def predict_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-predict MODEL.pt INPUT... --out OUT_DIR``: exit 0 done, 2 when the input is at fault
    (a bad argument, or images that could not be predicted: one line each says why), 1 a bug."""
    parser = Parser(prog="cellrcnn-predict", formatter_class=HelpFormatter,
                    description="Segment cells with a trained model and write label TIFFs, a per-cell table "
                                "and, on request, ImageJ ROI sets, QuPath GeoJSON, a COCO file and overlay PNGs. "
                                "Label TIFFs give a pixel under two cells to the better-scoring one; ROI sets, "
                                "GeoJSON and COCO keep each cell's whole outline.",
                    epilog="Many files at once: run it under torchrun (torchrun --nproc-per-node N --no-python "
                           "cellrcnn-predict ...): each process takes every N-th image, one GPU each (or CPU "
                           "cores), and cells.csv is the same as one process writes.")
    parser.add_argument("model", type=Path, help="checkpoint of a run (best.pt), a run folder, or a bioimage.io "
                                                 "package exported by cellrcnn-export-model (model.zip)")
    parser.add_argument("input", nargs="+", help="image files, folders of images, or patterns such as "
                                                 "'plate1/*.tif' (quoted or expanded by the shell)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    add_cell_arguments(parser)
    out = parser.add_argument_group("outputs")
    out.add_argument("--pixel-size", type=float, default=None, help="micrometres per pixel of every image, instead of what "
                     "their files state (ImageJ TIFF, OME-TIFF, OME-Zarr, CZI): measurements in um and um^2, "
                     "calibrated label TIFFs, and images resized for a model that records its own pixel size")
    out.add_argument("--rois", action="store_true", help="also write <image>_rois.zip (ImageJ ROI set)")
    out.add_argument("--overlays", action="store_true", help="also write <image>_overlay.png")
    out.add_argument("--geojson", action="store_true", help="also write <image>.geojson: QuPath cell objects, each "
                                                            "cell's outline with its nucleus, class and measurements")
    out.add_argument("--coco", action="store_true", help="also write cells.json: every cell and its parts as COCO "
                                                         "instance annotations (RLE), with scores")
    again = out.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace existing results")
    again.add_argument("--resume", action="store_true", help="finish an interrupted run in --out: images whose results "
                                                             "are complete are skipped, the others predicted")
    add_scale_arguments(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--image-glob", dest="data.image_glob", default="*", help="pattern of image files in a folder")
    run.add_argument("--projection", dest="data.projection", choices=PROJECTIONS, default=None,
                     help="Z-stacks and time series: max gives their maximum projection (default: as the model was "
                          "trained)")
    run.add_argument("--max-pixels", type=int, default=None,
                     help="the most pixels of an image read whole into memory, checked from its header first "
                          "(default 268 million; uncompressed TIFFs are read window by window and never meet it)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: each process "
                                                      "its LOCAL_RANK's GPU)")
    run.add_argument("--tta", action="store_true", help=TTA_HELP)
    run.add_argument("--batch-size", type=int, default=1, help="images (or tiles of a large image) per forward pass")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    check_out_folder(parser, args.out)
    check_scale_arguments(parser, args)
    choice = cell_choice(parser, args)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.max_pixels is not None and args.max_pixels < 1:
        parser.error(f"--max-pixels must be at least 1, got {args.max_pixels}")
    if args.pixel_size is not None and not MIN_PIXEL_UM <= args.pixel_size <= MAX_PIXEL_UM:
        parser.error(f"--pixel-size is micrometres per pixel, from {MIN_PIXEL_UM:g} to {MAX_PIXEL_UM:g}; got "
                     f"{args.pixel_size}")
    if not args.model.exists():
        parser.error(f"{args.model}: model not found (give best.pt, a run folder or a package .zip)")
    inputs, missing = _expand_inputs(args.input)
    if missing:
        parser.error(f"{missing[0]}: no such file or folder, and no file matches it"
                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    setup_logging(args.quiet, parser)
    from ..utils.runtime import process_group

    with process_group(args.device) as runtime:  # left however the run ends, on every process
        return _predict_in_group(args, runtime, inputs, choice)


def _predict_in_group(args: argparse.Namespace, runtime, inputs: list[Path], choice: dict) -> int:
    """Load the model, list the images and check ``--out``, then predict (every process of a torchrun job runs
    this; a process that fails before the first write stops the others at their check-in)."""
    from ..export.files import OUTPUT_SUFFIXES, output_paths
    from ..export.ngff import NGFF_LABELS
    from ..inference.predictor import Predictor
    from ..io.calibration import ngff_image
    from ..io.files import is_zarr
    from ..io.folders import list_images, output_names

    error = None
    try:
        predictor = Predictor.from_checkpoint(args.model, device=str(runtime.device), scale=args.scale,
                                              cell_diameter=args.cell_diameter,
                                              projection=getattr(args, "data.projection"),
                                              max_pixels=args.max_pixels, pixel_size=args.pixel_size)
        predictor.tta = args.tta
        data = predictor.config.data
        # masks beside their images are told apart as training told them: by their suffix or their pattern
        skip = OUTPUT_SUFFIXES + tuple({"_masks", data.mask_suffix, data.cells_suffix, data.nuclei_suffix} - {""})
        images = list(dict.fromkeys(Path(os.path.abspath(p)) for i in inputs
                                    for p in list_images(i, getattr(args, "data.image_glob"), skip,
                                                              mask_glob=data.mask_glob)))
        names = output_names(images)
    except Exception as err:  # said by this process below, once the others know to stop
        error = err
    _check_in(error, runtime)
    table_path = args.out / "cells.csv"
    if not (args.overwrite or args.resume):  # every process finds the same files, and returns alike
        clashes = [p for img in images for p in output_paths(args.out, names[img], args.rois, args.overlays,
                                                                                args.geojson).values()
                   if p.exists()] + [p for p in (table_path, args.out / COCO_FILE) if p.exists()]
        in_stores = [labels / kind for labels in (ngff_image(img) / "labels" for img in images if is_zarr(img))
                     for kind in NGFF_LABELS if (labels / kind).exists()]
        if in_stores:
            logger.error("error: %s already holds predicted labels; pass --overwrite to replace them (OME-Zarr "
                         "images get their labels written into their own store)", in_stores[0])
            return 2
        finished = _finished(args.out / PIECES, names.values())
        if clashes and finished and not table_path.exists():
            logger.error("error: %s holds an interrupted run (%d of these %d images done); pass --resume to finish "
                         "it, or --overwrite to start again", args.out, len(finished), len(images))
            return 2
        if clashes:
            logger.error("error: %s already holds results (%s%s); pass --resume to add what is missing, --overwrite "
                         "to replace them, or choose another --out", args.out, clashes[0].name,
                         f" and {len(clashes) - 1} more" if len(clashes) > 1 else "")
            return 2
    _check_in(None, runtime)  # every process has looked before any writes
    made = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    if predictor.auto_scale:
        logger.info("the scale of each image is estimated from the cells found in it (training scale %.3g)",
                    predictor.config.model.input_scale)
    elif predictor.scale is not None:
        logger.info("images resized by %.3g for the network (%s)", predictor.scale,
                    "given" if args.scale or args.cell_diameter else "the scale the model was trained at")
    return _predict_files(predictor, names, runtime, args, choice, table_path, made)


def _check_in(error: BaseException | None, runtime) -> None:
    """Every process's check-in (:func:`~cellrcnn.utils.runtime.check_in`): this process's ``error`` is raised once
    all know of it; when another process failed, :class:`~cellrcnn.utils.errors.StoppedTogether` says so in one
    line, so that this one stops too."""
    from ..utils.runtime import check_in

    check_in(runtime, error, "finished images are kept: --resume finishes the rest")


def _coco_of(file_name: str, prediction, parts: tuple[str, ...], data) -> dict:
    """One image's COCO dataset: its cells' whole masks, with their scores and classes, under the categories the
    model was trained with (``data.coco_cell``, ``data.coco_parts``)."""
    from ..export.coco import CocoImageCells, coco_dataset

    table = prediction.table.set_index("cell_id") if not prediction.table.empty else None
    ids = range(1, int(prediction.cells.max(initial=0)) + 1)
    scores = table["score"].reindex(ids).to_numpy() if table is not None else None
    classes = table["class"].reindex(ids).astype(str).tolist() if table is not None and "class" in table else None
    names = (*parts[:2], *data.coco_parts) if len(data.coco_parts) == len(parts) - 2 else parts
    return coco_dataset([CocoImageCells(file_name, prediction.cells.shape, prediction.cell_masks(), scores, classes)],
                        names, cell=data.coco_cell)


def _predict_files(predictor, names: dict[Path, str], runtime, args: argparse.Namespace, options: dict,
                   table_path: Path, made: bool) -> int:
    """Predict this process's share of the images (``names``: each image file and the name of its results) and
    write each one's files; then rank 0 writes the table (and the COCO file) of all from the pieces every finished
    image left in :data:`PIECES` (kept for ``--resume``)."""
    import json

    import pandas as pd

    from ..export.coco import merge_datasets, write_coco
    from ..export.files import write_table
    from ..utils.progress import progress
    from ..utils.runtime import gather, shard

    pieces = args.out / PIECES
    images = list(names)
    done = _finished(pieces, names.values()) if args.resume else set()
    todo = [image for image in images if names[image] not in done]
    if done and runtime.is_main:
        logger.info("%d of the %d images are done already; predicting the other %d", len(done), len(images),
                    len(todo))
    _check_in(None, runtime)  # every process has read what is done before any writes
    pieces.mkdir(exist_ok=True)
    mine = shard(todo, runtime)
    if runtime.distributed:
        logger.info("process %d of %d: %d of the %d images", runtime.rank + 1, runtime.world_size, len(mine),
                    len(todo))
    failed = []
    told = {"tiles": False}
    results = iter(predictor.predict_paths(mine, args.batch_size, tile=args.tile, overlap=args.overlap,
                                           progress=not args.quiet, names=[names[p] for p in mine], **options))
    rounds = -(-len(todo) // runtime.world_size)  # the same on every process: each checks in once a round
    for step in progress(range(rounds), total=rounds, desc="predict", unit="image",
                         disable=args.quiet or not runtime.is_main):
        error = None
        if step < len(mine):
            try:
                result = next(results)
                if result.error is not None:
                    failed.append(result.error)
                else:
                    _write_result(result, predictor, names[result.path], pieces, args, told)
            except Exception as err:  # said once the other processes know to stop
                error = err
        _check_in(error, runtime)
    failed = [f for part in gather(failed, runtime) for f in part]  # every process's, after all have finished
    cells = 0
    if runtime.is_main:
        finished = [names[image] for image in images if (pieces / f"{names[image]}.csv").is_file()]
        tables = [pd.read_csv(pieces / f"{name}.csv", dtype={"image": str, "class": str}) for name in finished]
        cells = sum(len(t) for t in tables)
        if tables:
            write_table(pd.concat(tables, ignore_index=True), table_path, overwrite=True)
        if args.coco and finished:
            write_coco(args.out / COCO_FILE, merge_datasets([json.loads((pieces / f"{name}.json").read_text())
                                                             for name in finished]), overwrite=True)
        if finished:
            logger.info("%d of %d images done, %d cells; results in %s", len(finished), len(images), cells, args.out)
        else:  # nothing to show for it: leave no folder behind (each failure is named above)
            _remove_if_empty(pieces, args.out if made else None)
    if failed and len(images) > 1:
        logger.error("error: %d of %d images could not be predicted (named above); the others are done",
                     len(failed), len(images))
    return 2 if failed else 0


def _write_result(result, predictor, stem: str, pieces: Path, args: argparse.Namespace, told: dict) -> None:
    """Write one image's files (``stem`` names them), then its pieces: its rows of the table last, which mark it
    done."""
    from ..export.coco import write_coco
    from ..export.files import export_prediction, write_table
    from ..export.ngff import write_ngff_labels
    from ..io.files import is_zarr

    if args.overlays and result.prediction.image is None:
        logger.warning("%s: predicted in tiles; no overlay PNG is drawn for a whole field (open the image "
                       "with its label TIFFs in Fiji or napari instead)", result.path.name)
    if result.prediction.masks is None and (args.rois or args.geojson or args.coco) and not told["tiles"]:
        told["tiles"] = True
        logger.warning("%s: predicted in tiles: ROIs, GeoJSON and COCO hold each cell as the label image does "
                       "(where cells overlap, the better-scoring one); images of one tile keep whole cells",
                       result.path.name)
    # an image left half-written by an interrupted run is written again
    export_prediction(result.prediction, args.out, predictor.parts, None, args.rois, args.overlays,
                      overwrite=args.overwrite or args.resume, geojson=args.geojson)
    if is_zarr(result.path):  # an OME-Zarr image gets its labels in its own store, beside the TIFFs in --out
        write_ngff_labels(result.path, {"cells": result.prediction.cells, "parts": result.prediction.parts},
                          result.prediction.pixel_size, overwrite=True)
    if args.coco:  # the file's own name, or its folder's too where names had to be told apart
        file_name = result.path.name
        if stem != result.path.stem:
            file_name = f"{result.path.parent.name}/{file_name}"
        write_coco(pieces / f"{stem}.json", _coco_of(file_name, result.prediction, predictor.parts,
                                                     predictor.config.data), overwrite=True)
    write_table(result.prediction.table, pieces / f"{stem}.csv", overwrite=True)  # last: the image is done
    logger.info("%s: %d cells", result.prediction.name, len(result.prediction.table))


def _remove_if_empty(*folders: Path | None) -> None:
    for folder in folders:
        if folder is not None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _finished(pieces: Path, names) -> set[str]:
    """The result names whose images an earlier run finished (their piece of the table is written)."""
    return {name for name in names if (pieces / f"{name}.csv").is_file()}
