"""cellrcnn-predict: label images, folders and globs, sharded under torchrun."""

from __future__ import annotations

import argparse
import glob
import logging
from pathlib import Path

from ..config.fields import PROJECTIONS
from ..io.coco import PREDICTION_FILE as COCO_FILE
from ..io.files import DataError
from .common import (HelpFormatter, Parser, add_cell_arguments, add_scale_arguments, cell_choice,
                     check_out_folder, check_scale_arguments, setup_logging)

__all__ = ["predict_main"]


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


def predict_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-predict MODEL.pt INPUT... --out OUT_DIR``: exit 0 done, 1 some images failed, 2 bad arguments."""
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
    out.add_argument("--pixel-size", type=float, default=None, help="micrometres per pixel (areas in um^2)")
    out.add_argument("--rois", action="store_true", help="also write <image>_rois.zip (ImageJ ROI set)")
    out.add_argument("--overlays", action="store_true", help="also write <image>_overlay.png")
    out.add_argument("--geojson", action="store_true", help="also write <image>.geojson: QuPath cell objects, each "
                                                            "cell's outline with its nucleus, class and measurements")
    out.add_argument("--coco", action="store_true", help="also write cells.json: every cell and its parts as COCO "
                                                         "instance annotations (RLE), with scores")
    out.add_argument("--overwrite", action="store_true", help="replace existing results")
    add_scale_arguments(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--image-glob", default="*", help="pattern of image files in a folder")
    run.add_argument("--projection", dest="data.projection", choices=PROJECTIONS, default=None,
                     help="Z-stacks and time series: max gives their maximum projection (default: as the model was "
                          "trained)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: each process "
                                                      "its LOCAL_RANK's GPU)")
    run.add_argument("--batch-size", type=int, default=1, help="images (or tiles of a large image) per forward pass")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    check_out_folder(parser, args.out)
    check_scale_arguments(parser, args)
    choice = cell_choice(parser, args)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.pixel_size is not None and not args.pixel_size > 0:
        parser.error(f"--pixel-size must be positive, got {args.pixel_size}")
    if not args.model.exists():
        parser.error(f"{args.model}: model not found (give best.pt, a run folder or a package .zip)")
    inputs, missing = _expand_inputs(args.input)
    if missing:
        parser.error(f"{missing[0]}: no such file or folder, and no file matches it"
                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    setup_logging(args.quiet, parser)
    from ..export.files import OUTPUT_SUFFIXES, output_paths
    from ..inference.predictor import Predictor
    from ..io.folders import list_images
    from ..utils.runtime import barrier, join_process_group

    try:
        images = list(dict.fromkeys(p for i in inputs for p in list_images(i, args.image_glob,
                                                                           OUTPUT_SUFFIXES + ("_masks",))))
        runtime = join_process_group(args.device)
        predictor = Predictor.from_checkpoint(args.model, device=str(runtime.device), scale=args.scale,
                                              cell_diameter=args.cell_diameter,
                                              projection=getattr(args, "data.projection"))
    except (DataError, ValueError, FileNotFoundError, ImportError) as err:
        logger.error("error: %s", err)
        return 2 if isinstance(err, ValueError) and not isinstance(err, DataError) else 1
    table_path = args.out / "cells.csv"
    if not args.overwrite:
        clashes = [p for img in images for p in output_paths(args.out, img.stem, args.rois, args.overlays,
                                                                                args.geojson).values()
                   if p.exists()] + [p for p in (table_path, args.out / COCO_FILE) if p.exists()]
        if clashes:
            logger.error("error: %s already holds results (%s%s); pass --overwrite to replace them or choose "
                         "another --out", args.out, clashes[0].name,
                         f" and {len(clashes) - 1} more" if len(clashes) > 1 else "")
            return 2
    barrier(runtime)  # every process has looked before any writes
    args.out.mkdir(parents=True, exist_ok=True)
    if predictor.auto_scale:
        logger.info("the scale of each image is estimated from the cells found in it (training scale %.3g)",
                    predictor.config.model.input_scale)
    elif predictor.scale is not None:
        logger.info("images resized by %.3g for the network (%s)", predictor.scale,
                    "given" if args.scale or args.cell_diameter else "the scale the model was trained at")
    return _predict_files(predictor, images, runtime, args, {**choice, "pixel_size": args.pixel_size}, table_path)


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


def _predict_files(predictor, images: list[Path], runtime, args: argparse.Namespace, options: dict,
                   table_path: Path) -> int:
    """Predict this process's share of ``images``, write each one's files, and the table of all (rank 0)."""
    import pandas as pd
    from ..utils.progress import progress

    from ..export.coco import merge_datasets, write_coco
    from ..export.files import export_prediction, write_table
    from ..utils.runtime import gather, leave_process_group, shard

    order = {path: i for i, path in enumerate(images)}
    mine = shard(images, runtime)
    if runtime.distributed:
        logger.info("process %d of %d: %d of the %d images", runtime.rank + 1, runtime.world_size, len(mine),
                    len(images))
    tables, failed, cocos = [], [], []
    told_tiles = False
    results = predictor.predict_paths(mine, args.batch_size, tile=args.tile, overlap=args.overlap,
                                      progress=not args.quiet, **options)
    for result in progress(results, total=len(mine), desc="predict", unit="image",
                       disable=args.quiet or not runtime.is_main):
        if result.error is not None:
            failed.append(result.error)
            continue
        if args.overlays and result.prediction.image is None:
            logger.warning("%s: predicted in tiles; no overlay PNG is drawn for a whole field (open the image "
                           "with its label TIFFs in Fiji or napari instead)", result.path.name)
        if result.prediction.masks is None and (args.rois or args.geojson or args.coco) and not told_tiles:
            told_tiles = True
            logger.warning("%s: predicted in tiles: ROIs, GeoJSON and COCO hold each cell as the label image does "
                           "(where cells overlap, the better-scoring one); images of one tile keep whole cells",
                           result.path.name)
        export_prediction(result.prediction, args.out, predictor.parts, args.pixel_size, args.rois, args.overlays,
                          overwrite=args.overwrite, geojson=args.geojson)
        tables.append((order[result.path], result.prediction.table))
        if args.coco:
            try:
                cocos.append((order[result.path], _coco_of(result.path.name, result.prediction, predictor.parts,
                                                           predictor.config.data)))
            except ValueError as err:
                failed.append(f"{result.path}: {err}")
        logger.info("%s: %d cells", result.prediction.name, len(result.prediction.table))
    gathered = gather((tables, failed, cocos), runtime)  # every process's results, put in image order below
    tables = [table for _, table in sorted((t for part, _, _ in gathered for t in part), key=lambda item: item[0])]
    failed = [f for _, part, _ in gathered for f in part]
    cocos = [coco for _, coco in sorted((c for _, _, part in gathered for c in part), key=lambda item: item[0])]
    if tables and runtime.is_main:
        write_table(pd.concat(tables, ignore_index=True), table_path, overwrite=args.overwrite)
    if cocos and runtime.is_main:
        write_coco(args.out / COCO_FILE, merge_datasets(cocos), overwrite=args.overwrite)
    if runtime.is_main:
        logger.info("%d of %d images done, %d cells; results in %s", len(images) - len(failed), len(images),
                    sum(len(t) for t in tables), args.out)
        if failed:
            logger.error("%d image(s) failed:\n%s", len(failed), "\n".join(failed))
    leave_process_group(runtime)
    return 1 if failed else 0
