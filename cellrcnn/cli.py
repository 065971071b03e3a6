"""Command-line front ends: shared argument groups and the installed commands.

Each command turns its arguments into one config, reports a bad argument as one
line with exit code 2, and a data problem as one line naming the file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import (AUGMENTATIONS, BACKBONES, BEST_METRICS, ENCODINGS, MASK_ALIGNMENTS, MASK_SIZES, NORMS, SCHEDULES,
                     TARGETS, Config, DataConfig, ModelConfig, TrainConfig)
from .data import check_folder
from .io import DataError

__all__ = ["add_data_arguments", "data_config_from_args", "check_data_main", "finetune_main", "predict_main", "evaluate_main"]

logger = logging.getLogger(__name__)

_MAX_SHOWN = 20  # problems listed one by one; the rest are counted


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None: those flags say in their help what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,128,255, got {text!r}") from None


def _float_pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers such as 1,99.8, got {text!r}") from None
    return low, high


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(","))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the data options shared by every command that reads a data folder."""
    d = DataConfig()
    files = parser.add_argument_group("finding images and masks")
    files.add_argument("--image-glob", default=d.image_glob, help="pattern of image files (default: %(default)s)")
    files.add_argument("--mask-glob", default=d.mask_glob,
                       help="pattern of mask files; set both globs when image and mask differ only by "
                            "extension, e.g. --image-glob '*.bmp' --mask-glob '*.png' (default: %(default)s)")
    files.add_argument("--mask-suffix", default=d.mask_suffix,
                       help="stem suffix of part masks, as in cell_001_masks.tif (default: %(default)s)")
    files.add_argument("--skip-unpaired", action="store_true",
                       help="skip images without a mask, with a warning, instead of stopping")
    masks = parser.add_argument_group("reading masks")
    masks.add_argument("--encoding", choices=ENCODINGS, default=d.encoding,
                       help="parts: one part-label map; cells+parts: cell instances plus part map; "
                            "cells+nuclei: cell and nucleus instances (default: %(default)s)")
    masks.add_argument("--part-values", type=_int_list, default=d.part_values, metavar="V0,V1,...",
                       help="mask value of each part, background first (default: 0,1,2; WBC data: 0,128,255)")
    masks.add_argument("--snap-values", action="store_true",
                       help="map undeclared mask values to the nearest declared one instead of failing")
    masks.add_argument("--cells-suffix", default=d.cells_suffix, help="stem suffix of cell instance masks "
                       "(default: %(default)s)")
    masks.add_argument("--nuclei-suffix", default=d.nuclei_suffix, help="stem suffix of nucleus instance masks "
                       "(default: %(default)s)")
    masks.add_argument("--classes-csv", type=str, default=None,
                       help="CSV of 'image ID,class label' (1..C) giving each image's cells a class")
    masks.add_argument("--class-names", type=_names, default=d.class_names, metavar="NAME,...",
                       help="name of each cell class, class 1 first (default: cell)")
    masks.add_argument("--targets", choices=TARGETS, default=d.targets,
                       help="whole-cell: every cell; largest: only the largest cell off the border (default: %(default)s)")
    masks.add_argument("--min-area", type=int, default=d.min_area, help="ignore cells smaller than this many "
                       "pixels (default: %(default)s)")
    masks.add_argument("--percentiles", type=_float_pair, default=d.percentiles, metavar="LOW,HIGH",
                       help="percentiles scaled to 0 and 1 for 16-bit and float images (default: 1,99.8)")
    split = parser.add_argument_group("validation split and augmentation")
    split.add_argument("--val-fraction", type=float, default=d.val_fraction,
                       help="fraction of images held out for validation (default: %(default)s)")
    split.add_argument("--val-dir", type=str, default=None, help="a separate validation folder instead")
    split.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the split (default: %(default)s)")
    split.add_argument("--augment", choices=AUGMENTATIONS, default=d.augment,
                       help="augmentation of training images (default: %(default)s)")


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    """The :class:`DataConfig` of parsed arguments (raises ValueError for bad values)."""
    return DataConfig(
        image_glob=args.image_glob, mask_glob=args.mask_glob, mask_suffix=args.mask_suffix,
        encoding=args.encoding, cells_suffix=args.cells_suffix, nuclei_suffix=args.nuclei_suffix,
        part_values=args.part_values, snap_values=args.snap_values, classes_csv=args.classes_csv,
        class_names=args.class_names, targets=args.targets, min_area=args.min_area, percentiles=args.percentiles,
        skip_unpaired=args.skip_unpaired, val_fraction=args.val_fraction, val_dir=args.val_dir,
        split_seed=args.split_seed, augment=args.augment,
    )


def _setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stdout)
    # tifffile logs its own error for a corrupt file; the DataError raised for it says it better, naming the file.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def check_data_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-check-data DATA_DIR [data options]``: exit 0 usable, 1 problems found, 2 bad arguments."""
    parser = _Parser(
        prog="cellrcnn-check-data",
        description="Read every image and mask of a folder as training would, summarise it and list every problem.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("data_dir", type=Path, help="folder of images and masks")
    parser.add_argument("--parts", type=_names, default=("background", "cytoplasm", "nucleus"), metavar="NAME,...",
                        help="part names, background first, in the order of --part-values")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = data_config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if len(args.parts) != len(config.part_values):
        parser.error(f"--parts names {len(args.parts)} parts but --part-values gives {len(config.part_values)} values")
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir}: folder not found")
    _setup_logging()
    try:
        report = check_folder(args.data_dir, config, part_names=args.parts)
    except DataError as err:
        logger.error("problem: %s", err)
        return 1
    table, problems = report["table"], report["problems"]
    if len(table):
        fractions = table[[f"{p}_fraction" for p in args.parts]].mean()
        logger.info("%s: %d usable images, %d cells (%.2f per image, %d images without a cell)",
                    args.data_dir, len(table), table["cells"].sum(), table["cells"].mean(), (table["cells"] == 0).sum())
        logger.info("mean part pixel fractions: %s",
                    ", ".join(f"{p} {f:.3f}" for p, f in zip(args.parts, fractions)))
        if config.classes_csv:
            counts = table["class"].value_counts().sort_index()
            logger.info("images per class: %s", ", ".join(f"{config.class_names[c - 1]} {n}" for c, n in counts.items()))
        sizes = (table["width"].astype(str) + "x" + table["height"].astype(str)).value_counts()
        shown = ", ".join(f"{n} of {size}" for size, n in sizes.head(5).items())
        more = f" and {len(sizes) - 5} other sizes" if len(sizes) > 5 else ""
        logger.info("image sizes (width x height): %s%s", shown, more)
        logger.info("pixel types: %s", ", ".join(f"{n} {t}" for t, n in table["dtype"].value_counts().items()))
    for problem in problems[:_MAX_SHOWN]:
        logger.error("problem: %s", problem)
    if len(problems) > _MAX_SHOWN:
        logger.error("... and %d more problems of the same kinds", len(problems) - _MAX_SHOWN)
    if problems:
        logger.error("%d problem(s) found; fix them or leave those files out before training", len(problems))
        return 1
    logger.info("no problems found")
    return 0


def _part_weights(text: str) -> dict[str, float]:
    try:
        return {name.strip(): float(w) for name, w in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected part=weight pairs such as cytoplasm=2,nucleus=1, got {text!r}") from None


def finetune_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cellrcnn-finetune",
        description="Fine-tune a part-aware Mask R-CNN on a folder of microscopy images and masks.",
        formatter_class=_HelpFormatter,
        epilog="Example (the WBC data): cellrcnn-finetune ../shared/datasets/wbc_jtsc --out runs/wbc "
               "--image-glob '*.bmp' --mask-glob '*.png' --part-values 0,128,255 --min-size 256 --max-size 256",
    )
    parser.add_argument("data_dir", type=Path, help="folder of images and masks (see data/README.md)")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write (config, checkpoints, history)")
    add_data_arguments(parser)
    m, t = ModelConfig(), TrainConfig()
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=BACKBONES, default=m.backbone)
    model.add_argument("--weights", default=m.weights, help="coco, imagenet, none, or the path of a state dict")
    model.add_argument("--min-size", type=int, default=m.min_size, help="short image side after resizing, in pixels")
    model.add_argument("--max-size", type=int, default=m.max_size, help="longest image side after resizing")
    model.add_argument("--parts", type=_names, default=m.parts, metavar="NAME,...",
                       help="part names, background first, in the order of --part-values")
    model.add_argument("--cytoplasm-weight", type=float, default=None,
                       help="loss weight of cytoplasm pixels (shortcut for --part-weights cytoplasm=W); default 1")
    model.add_argument("--part-weights", type=_part_weights, default={}, metavar="PART=W,...",
                       help="loss weight of each part; unnamed parts weigh 1")
    model.add_argument("--class-specific-parts", action="store_true", help="one set of part logits per cell class")
    model.add_argument("--mask-size", type=int, choices=MASK_SIZES, default=m.mask_size,
                       help="resolution of the predicted part masks; 56 follows thin cytoplasm on large cells "
                            "more closely and costs about 2.5x per training step on a CPU")
    model.add_argument("--norm", choices=NORMS, default=m.norm,
                       help="normalisation layers; auto: group norm from scratch (--weights none), the file's own "
                            "for a weights file, else as torchvision (frozen batch norm; trainable for "
                            "resnet50_fpn_v2)")
    model.add_argument("--mask-alignment", choices=MASK_ALIGNMENTS, default=m.mask_alignment,
                       help="exact: pixel-exact mask geometry; torchvision: torchvision's, half a pixel off")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=t.epochs)
    train.add_argument("--batch-size", type=int, default=t.batch_size, help="images per forward pass")
    train.add_argument("--accumulate", type=int, default=t.accumulate, help="images per optimizer step")
    auto = SCHEDULES["pretrained"], SCHEDULES["scratch"]
    train.add_argument("--lr", type=float, default=None, help=f"learning rate (SGD, momentum 0.9); default "
                       f"{auto[0]['lr']} with pretrained weights, {auto[1]['lr']} from scratch (--weights none)")
    train.add_argument("--lr-step", type=int, default=None, help=f"epochs between lr decays; default "
                       f"{auto[0]['lr_step']} with pretrained weights, {auto[1]['lr_step']} from scratch")
    train.add_argument("--lr-gamma", type=float, default=t.lr_gamma, help="lr factor at each decay")
    train.add_argument("--lr-floor", type=float, default=t.lr_floor, help="lowest lr (0: none)")
    train.add_argument("--warmup-epochs", type=int, default=None, help=f"epochs of linear lr warm-up; default "
                       f"{auto[0]['warmup_epochs']} with pretrained weights, {auto[1]['warmup_epochs']} from scratch")
    train.add_argument("--weight-decay", type=float, default=t.weight_decay)
    train.add_argument("--clip-grad-norm", type=float, default=None, help="clip the gradient norm (default: off)")
    train.add_argument("--device", default=t.device, help="auto (CUDA when present), cpu, cuda or cuda:N")
    train.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                       help="mixed precision (default: on with CUDA, off on a CPU)")
    train.add_argument("--val-every", type=int, default=t.val_every, help="validate every N epochs")
    train.add_argument("--best-metric", choices=BEST_METRICS, default=t.best_metric,
                       help="metric choosing best.pt (part_dice: mean of cytoplasm and nucleus Dice)")
    train.add_argument("--patience", type=int, default=t.patience, help="stop after N validations without "
                       "improvement (0: never)")
    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt, with its config")
    run.add_argument("--seed", type=int, default=t.seed)
    run.add_argument("--workers", type=int, default=t.workers, help="data-loading processes")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_finetune_args(args: argparse.Namespace) -> Config:
    """The whole :class:`Config` of parsed ``finetune`` arguments (raises ValueError)."""
    weights = dict(args.part_weights)
    if args.cytoplasm_weight is not None:
        if "cytoplasm" not in args.parts:
            raise ValueError(f"--cytoplasm-weight needs a part named 'cytoplasm'; parts are {list(args.parts)}")
        weights["cytoplasm"] = args.cytoplasm_weight
    data = data_config_from_args(args)
    model = ModelConfig(parts=args.parts, part_weights=weights, num_classes=len(data.class_names),
                        backbone=args.backbone, weights=args.weights, min_size=args.min_size,
                        max_size=args.max_size, class_specific_parts=args.class_specific_parts,
                        mask_size=args.mask_size, norm=args.norm, mask_alignment=args.mask_alignment)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
                        lr_step=args.lr_step, lr_gamma=args.lr_gamma, lr_floor=args.lr_floor,
                        warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
                        clip_grad_norm=args.clip_grad_norm, device=args.device, amp=args.amp,
                        val_every=args.val_every, best_metric=args.best_metric, patience=args.patience,
                        seed=args.seed, workers=args.workers)
    return Config(model=model, data=data, train=train)


def finetune_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-finetune DATA_DIR --out RUN_DIR [options]``: exit 0 done, 1 failed, 2 bad arguments."""
    from .train import fit  # the trainer pulls in the model; --help stays fast without it

    parser = finetune_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_finetune_args(args)
    except ValueError as err:
        parser.error(str(err))
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir}: folder not found")
    if args.resume and not (args.out / "last.pt").is_file():
        parser.error(f"--resume: {args.out} holds no last.pt to continue from")
    if not args.resume and (args.out / "last.pt").exists():
        parser.error(f"{args.out} already holds a run; pass --resume to continue it or choose another --out")
    _setup_logging()
    try:
        history = fit(config, args.data_dir, args.out, resume=args.resume, quiet=args.quiet)
    except (DataError, ValueError, RuntimeError, FloatingPointError, FileNotFoundError) as err:
        logger.error("error: %s", str(err).splitlines()[0] if str(err) else type(err).__name__)
        return 1
    last = history.iloc[-1]
    logger.info("done: %d epochs, results in %s (best.pt, last.pt, history.csv, curves.png)", int(last["epoch"]),
                args.out)
    return 0


def _input_images(path: Path, image_glob: str, skip_suffixes: tuple[str, ...]) -> list[Path]:
    """One image file, or the image files of a folder (masks and our own outputs left out)."""
    import fnmatch

    from .io import IMAGE_EXTENSIONS

    if path.is_file():
        return [path]
    found = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and fnmatch.fnmatch(p.name, image_glob) and not p.stem.endswith(skip_suffixes)]
    if not found:
        raise DataError(f"{path}: no images matching {image_glob!r}; check the folder and --image-glob")
    return found


def predict_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-predict MODEL.pt INPUT --out OUT_DIR``: exit 0 done, 1 some images failed, 2 bad arguments."""
    import pandas as pd

    from .export import export_prediction, output_paths
    from .io import atomic_write
    from .predict import Predictor

    parser = _Parser(prog="cellrcnn-predict", formatter_class=_HelpFormatter,
                     description="Segment cells with a trained model and write label TIFFs, a per-cell table "
                                 "and, on request, ImageJ ROI sets and overlay PNGs.")
    parser.add_argument("model", type=Path, help="checkpoint of a run (best.pt)")
    parser.add_argument("input", type=Path, help="an image file or a folder of images")
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    sel = parser.add_argument_group("which cells")
    sel.add_argument("--score-threshold", type=float, default=0.5, help="minimum detection score")
    sel.add_argument("--largest", action="store_true", help="keep only the largest complete cell per image")
    sel.add_argument("--max-cells", type=int, default=None, help="keep at most this many cells per image")
    out = parser.add_argument_group("outputs")
    out.add_argument("--pixel-size", type=float, default=None, help="micrometres per pixel (areas in um^2)")
    out.add_argument("--rois", action="store_true", help="also write <image>_rois.zip (ImageJ ROI set)")
    out.add_argument("--overlays", action="store_true", help="also write <image>_overlay.png")
    out.add_argument("--overwrite", action="store_true", help="replace existing results")
    run = parser.add_argument_group("run")
    run.add_argument("--image-glob", default="*", help="pattern of image files in a folder")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not 0 <= args.score_threshold < 1:
        parser.error(f"--score-threshold must lie in [0, 1), got {args.score_threshold}")
    for name in ("max_cells", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.pixel_size is not None and not args.pixel_size > 0:
        parser.error(f"--pixel-size must be positive, got {args.pixel_size}")
    if not args.model.is_file():
        parser.error(f"{args.model}: checkpoint not found")
    if not args.input.exists():
        parser.error(f"{args.input}: no such file or folder")
    _setup_logging(args.quiet)
    try:
        predictor = Predictor.from_checkpoint(args.model, device=args.device)
        images = _input_images(args.input, args.image_glob, ("_cells", "_parts", "_overlay", "_masks"))
    except (DataError, ValueError, FileNotFoundError) as err:
        logger.error("error: %s", err)
        return 2 if isinstance(err, ValueError) and not isinstance(err, DataError) else 1
    table_path = args.out / "cells.csv"
    if not args.overwrite:
        clashes = [p for img in images for p in output_paths(args.out, img.stem, args.rois, args.overlays).values()
                   if p.exists()] + ([table_path] if table_path.exists() else [])
        if clashes:
            logger.error("error: %s already holds results (%s%s); pass --overwrite to replace them or choose "
                         "another --out", args.out, clashes[0].name,
                         f" and {len(clashes) - 1} more" if len(clashes) > 1 else "")
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    tables, failed = [], []
    batches = [images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    for batch in tqdm(batches, desc="predict", unit="batch", disable=args.quiet):
        try:
            results = predictor.predict_batch(batch, score_threshold=args.score_threshold, largest=args.largest,
                                              max_cells=args.max_cells, pixel_size=args.pixel_size)
        except DataError as err:  # one unreadable file: predict the rest of the batch one by one
            results = []
            for path in batch:
                try:
                    results += predictor.predict_batch([path], score_threshold=args.score_threshold,
                                                       largest=args.largest, max_cells=args.max_cells,
                                                       pixel_size=args.pixel_size)
                except DataError as err:
                    failed.append(str(err))
                    logger.error("failed: %s", err)
        for result in results:
            export_prediction(result, args.out, predictor.parts, args.pixel_size, args.rois, args.overlays,
                              overwrite=args.overwrite)
            tables.append(result.table)
            logger.info("%s: %d cells", result.name, len(result.table))
    if tables:
        table = pd.concat(tables, ignore_index=True)
        atomic_write(table_path, lambda tmp: table.to_csv(tmp, index=False), overwrite=args.overwrite)
    done = len(images) - len(failed)
    logger.info("%d of %d images done, %d cells; results in %s", done, len(images),
                sum(len(t) for t in tables), args.out)
    if failed:
        logger.error("%d image(s) failed:\n%s", len(failed), "\n".join(failed))
        return 1
    return 0


_DATA_FIELDS = ("image_glob", "mask_glob", "mask_suffix", "encoding", "cells_suffix", "nuclei_suffix", "part_values",
                "snap_values", "classes_csv", "class_names", "targets", "min_area", "percentiles")


def evaluate_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-evaluate (MODEL.pt | --pred-dir DIR) DATA_DIR --out OUT_DIR``: exit 0, 1 failed, 2 bad arguments."""
    import numpy as np
    import tifffile

    from .data import CellDataset
    from .io import atomic_write, find_pairs, read_labels
    from .model import load_checkpoint
    from .report import Scored, evaluate, worst_images_figure

    parser = _Parser(prog="cellrcnn-evaluate", formatter_class=_HelpFormatter,
                     description="Score a model, or label TIFFs already written (by cellrcnn or another tool), "
                                 "against the ground truth of a data folder.",
                     epilog="With a model, the data options default to those the model was trained with.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="[MODEL.pt] DATA_DIR",
                        help="a checkpoint and the data folder, or only the data folder with --pred-dir")
    parser.add_argument("--out", type=Path, required=True, help="folder for per_image.csv, summary.csv, worst_images.png")
    parser.add_argument("--pred-dir", type=Path, default=None, help="score label TIFFs in this folder instead of a model")
    parser.add_argument("--pred-cells-suffix", default="_cells", help="with --pred-dir: <image><suffix>.tif holds cells")
    parser.add_argument("--pred-parts-suffix", default="_parts", help="with --pred-dir: <image><suffix>.tif holds parts "
                        "(optional: without it only cells are scored)")
    parser.add_argument("--parts", type=_names, default=("background", "cytoplasm", "nucleus"), metavar="NAME,...",
                        help="part names (with a model: the model's)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="minimum detection score")
    parser.add_argument("--largest", action="store_true", help="keep only the largest complete predicted cell")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    model_path = None
    if args.pred_dir is None:
        if len(args.paths) != 2:
            parser.error("give MODEL.pt and DATA_DIR, or DATA_DIR with --pred-dir")
        model_path, data_dir = args.paths
        if not model_path.is_file():
            parser.error(f"{model_path}: checkpoint not found")
        try:
            saved = load_checkpoint(model_path)["config"]
        except ValueError as err:
            parser.error(str(err))
        parser.set_defaults(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in saved["data"].items()
                               if k in _DATA_FIELDS}, parts=tuple(saved["model"]["parts"]))
        args = parser.parse_args(argv)
    else:
        if len(args.paths) != 1:
            parser.error("with --pred-dir give only DATA_DIR")
        data_dir = args.paths[0]
        if not args.pred_dir.is_dir():
            parser.error(f"{args.pred_dir}: folder not found")
    if not data_dir.is_dir():
        parser.error(f"{data_dir}: folder not found")
    try:
        config = data_config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    outputs = [args.out / n for n in ("per_image.csv", "summary.csv", "worst_images.png")]
    if not args.overwrite and any(p.exists() for p in outputs):
        parser.error(f"{args.out} already holds results; pass --overwrite to replace them or choose another --out")
    _setup_logging()
    try:
        dataset = CellDataset(find_pairs(data_dir, config), config)
        predictor = None
        if model_path is not None:
            from .predict import Predictor
            predictor = Predictor.from_checkpoint(model_path, device=args.device)
        items = []
        for i, pair in enumerate(dataset.pairs):
            image, target = dataset[i]
            masks = target["masks"].numpy()
            true_cells = np.zeros(image.shape[1:], dtype=np.int64)
            for k, mask in enumerate(masks, start=1):
                true_cells[mask > 0] = k
            true_parts = masks.max(axis=0) if len(masks) else np.zeros(image.shape[1:], dtype=np.uint8)
            if predictor is not None:
                result = predictor.predict(pair.image, score_threshold=args.score_threshold, largest=args.largest)
                scores = dict(zip(result.table["cell_id"].astype(int), result.table["score"]))
                pred_cells, pred_parts = result.cells, result.parts
            else:
                cells_path = args.pred_dir / f"{pair.name}{args.pred_cells_suffix}.tif"
                parts_path = args.pred_dir / f"{pair.name}{args.pred_parts_suffix}.tif"
                if not cells_path.is_file():
                    raise DataError(f"{cells_path}: no prediction for {pair.image.name}")
                pred_cells, scores = read_labels(cells_path), None
                pred_parts = read_labels(parts_path) if parts_path.is_file() else None
                if pred_cells.shape != true_cells.shape:
                    raise DataError(f"{cells_path}: size {pred_cells.shape} differs from {pair.image.name} "
                                    f"{true_cells.shape}")
            items.append(Scored(pair.name, true_cells, true_parts, pred_cells, pred_parts, scores,
                                image.permute(1, 2, 0).numpy()))
        result = evaluate(items, args.parts)
    except (DataError, ValueError, FileNotFoundError) as err:
        logger.error("error: %s", err)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(outputs[0], lambda tmp: result["per_image"].to_csv(tmp, index=False), overwrite=args.overwrite)
    atomic_write(outputs[1], lambda tmp: result["summary"].to_csv(tmp, index=False), overwrite=args.overwrite)
    worst_images_figure(outputs[2], items, result["per_image"], args.parts, overwrite=args.overwrite)
    summary = result["summary"].set_index("metric")
    headline = [m for m in ("mean cytoplasm_dice", "mean nucleus_dice", "mean cell_dice", "COCO mask AP",
                            "COCO mask AP50") if m in summary.index]
    logger.info("%d images: %s", len(items), ", ".join(f"{m.replace('mean ', '')} {summary.loc[m, 'value']:.3f}"
                                                         for m in headline))
    at50 = result["summary"].query("threshold == 0.5").set_index("metric")["value"]
    logger.info("at IoU 0.5: precision %.3f, recall %.3f, F1 %.3f, PQ %.3f; results in %s",
                at50["precision"], at50["recall"], at50["f1"], at50["pq"], args.out)
    return 0
