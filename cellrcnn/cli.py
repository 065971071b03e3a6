"""Command-line front ends: shared argument groups and the installed commands.

Each command turns its arguments into one config, reports a bad argument as one
line with exit code 2, and a data problem as one line naming the file.
"""

from __future__ import annotations

import argparse
import glob
import dataclasses
import inspect
import logging
import sys
from pathlib import Path

from .config import (_SECTIONS, rename_settings, AUGMENTATIONS, BACKBONES, ENCODINGS, LR_SCHEDULES, MASK_ALIGNMENTS, MASK_SIZES,
                     NORMS, PROJECTIONS, SCHEDULES, TARGETS, Config, DataConfig, _field_types, parse_field_value)
from .io import DataError

__all__ = ["add_config_arguments", "config_overrides", "data_config_from_args", "check_data_main", "finetune_main",
           "predict_main", "evaluate_main", "export_model_main"]

logger = logging.getLogger(__name__)

_MAX_SHOWN = 20  # problems listed one by one; the rest are counted


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None: those flags say in their help what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump), exit code 2, in its own flags' terms."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {in_cli_terms(message, self)} (--help lists the options)\n")


def in_cli_terms(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with the settings it names (``data.snap_values=True``, ``cell_diameter='auto'``) as this
    command's flags (``--snap-values``, ``--cell-diameter auto``); settings without a flag stay as they are.
    The library names config fields and arguments, so that its messages hold in a notebook too."""
    flags = {action.dest: action.option_strings for action in parser._actions if action.option_strings}

    def flag(name: str, value: str | None) -> str | None:
        strings = flags.get(name)
        if not strings:
            return None
        if value is None or value == "True":
            return strings[0]
        if value == "False":
            return next((s for s in strings if s.startswith("--no-")), f"{strings[0]} false")
        return f"{strings[0]} {value}"

    return rename_settings(message, flag)


class _InCliTerms(logging.Filter):
    """Log lines in the command's terms (:func:`in_cli_terms`)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = in_cli_terms(record.getMessage(), self.parser), None
        return True


#: Command-line shortcuts: (argument group, section, fields). Flag names, types, defaults and help come from
#: the config dataclasses; every other field is reachable with --set section.field=value.
_DATA_FLAGS = (
    ("finding images and masks", "data", ("image_glob", "mask_glob", "mask_suffix", "skip_unpaired")),
    ("reading masks", "data", ("encoding", "part_values", "snap_values", "cells_suffix", "nuclei_suffix",
                               "classes_csv", "class_names", "targets", "min_area", "percentiles")),
    ("validation split and augmentation", "data", ("val_fraction", "val_dir", "split_seed", "augment")),
    ("channels, stacks and crops", "data", ("channels", "projection", "crop")),
)
_MODEL_FLAGS = (("model", "model", ("backbone", "weights", "min_size", "max_size", "parts", "part_weights",
                                    "class_specific_parts", "mask_size", "norm", "mask_alignment",
                                    "mask_threshold")),)
_TRAIN_FLAGS = (
    ("training", "train", ("epochs", "steps", "batch_size", "accumulate", "lr", "lr_schedule", "lr_step",
                           "lr_gamma", "lr_floor", "warmup_epochs", "momentum", "weight_decay", "clip_grad_norm",
                           "device", "amp", "val_every", "best_metric", "best_smoothing", "patience")),
    ("run", "train", ("seed", "workers")),
)
_CHOICES = {"data.encoding": ENCODINGS, "data.projection": PROJECTIONS, "data.targets": TARGETS, "data.augment": AUGMENTATIONS,
            "model.backbone": BACKBONES, "model.mask_size": MASK_SIZES, "model.norm": NORMS,
            "model.mask_alignment": MASK_ALIGNMENTS, "train.lr_schedule": LR_SCHEDULES}
#: Defaults that depend on other settings, as their help says.
_AUTO_HELP = {name: (f"; default {SCHEDULES['pretrained'][name]} with pretrained weights, "
                     f"{SCHEDULES['scratch'][name]} from scratch (--weights none)") for name in SCHEDULES["scratch"]}


def _field_help(cls: type) -> dict[str, str]:
    """Each field's description in the numpy-style "Parameters" section of a config class's docstring."""
    text = inspect.getdoc(cls).split("----------", 1)[1]
    found: dict[str, str] = {}
    names: list[str] = []
    for line in text.splitlines():
        if line and not line.startswith(" "):
            names = [n.strip() for n in line.split(",")]
            for name in names:
                found[name] = ""
        elif names:
            for name in names:
                found[name] = (found[name] + " " + line.strip()).strip()
    return {name: doc.replace(":data:", "").replace(":func:", "").replace("`", "").replace("%", "%%")
            for name, doc in found.items()}


def _typed(hint, flag: str):
    def parse(text: str):
        try:
            return parse_field_value(hint, text)  # argparse names the flag itself
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = flag  # argparse names the type in its messages
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, groups) -> None:
    """Add one flag per listed config field (``--min-size`` sets ``model.min_size``).

    Flags default to "not given", so a config read from a file keeps its values
    unless a flag is given; :func:`config_overrides` collects those given.
    """
    for title, section, names in groups:
        cls = _SECTIONS[section]
        group = parser.add_argument_group(title)
        hints, docs, defaults = _field_types(cls), _field_help(cls), cls()
        for name in names:
            key, flag, hint = f"{section}.{name}", "--" + name.replace("_", "-"), hints[name]
            default = getattr(defaults, name)
            help_text = docs[name].rstrip(".") + _AUTO_HELP[name] if name in _AUTO_HELP else docs[name]
            if default is not None and not isinstance(default, (dict, bool)):
                shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
                help_text += f" (default: {shown})"
            if hint is bool:
                group.add_argument(flag, dest=key, action="store_true", default=argparse.SUPPRESS, help=help_text)
            elif hint == (bool | None):
                group.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                   help=help_text)
            else:
                choices = _CHOICES.get(key)
                group.add_argument(flag, dest=key, type=_typed(hint, flag), default=argparse.SUPPRESS,
                                   choices=choices, metavar="{" + ",".join(map(str, choices)) + "}" if choices else
                                   name.upper(), help=help_text)


def config_overrides(args: argparse.Namespace, section: str | None = None) -> dict:
    """The config fields given on the command line: ``{"train.lr": 0.002, ...}`` (one section's, if named)."""
    return {k: v for k, v in vars(args).items() if "." in k and (section is None or k.startswith(section + "."))}


def data_config_from_args(args: argparse.Namespace, base: DataConfig | None = None) -> DataConfig:
    """``base`` (default: the defaults) with the data flags given on the command line (raises ValueError)."""
    fields = {k.split(".", 1)[1]: v for k, v in config_overrides(args, "data").items()}
    return dataclasses.replace(base or DataConfig(), **fields)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(","))


def _setup_logging(quiet: bool = False, parser: argparse.ArgumentParser | None = None) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stdout)
    if parser is not None:  # the library's messages name config fields; the user typed flags
        for handler in logging.getLogger().handlers:
            for old in [f for f in handler.filters if isinstance(f, _InCliTerms)]:
                handler.removeFilter(old)
            handler.addFilter(_InCliTerms(parser))
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
    add_config_arguments(parser, _DATA_FLAGS)
    args = parser.parse_args(argv)
    try:
        config = data_config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if len(args.parts) != len(config.part_values):
        parser.error(f"--parts names {len(args.parts)} parts but --part-values gives {len(config.part_values)} values")
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir}: folder not found")
    _setup_logging(parser=parser)
    try:
        from .data import check_folder  # loads torch: after the arguments are checked

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


def finetune_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cellrcnn-finetune",
        description="Fine-tune a part-aware Mask R-CNN on a folder of microscopy images and masks. Settings come "
                    "from the defaults, or --config FILE, then the model of --from RUN, then the flags given, "
                    "then --set.",
        formatter_class=_HelpFormatter,
        epilog="Example (the WBC data): cellrcnn-finetune ../shared/datasets/wbc_jtsc --out runs/wbc "
               "--image-glob '*.bmp' --mask-glob '*.png' --part-values 0,128,255 --min-size 256 --max-size 256. "
               "Again with one change: cellrcnn-finetune DATA --config runs/wbc/config.json --out runs/wbc2 "
               "--set train.lr=0.002. Adapting it to another microscope: cellrcnn-finetune MY_IMAGES --from "
               "runs/wbc --out runs/mine",
    )
    parser.add_argument("data_dir", type=Path, help="folder of images and masks (see data/README.md)")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write (config, checkpoints, history)")
    files = parser.add_argument_group("config files")
    files.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="start from this config (a run's config.json works as is)")
    files.add_argument("--from", type=Path, default=None, metavar="RUN", dest="from_run",
                       help="adapt a trained model to new images: take the model settings (backbone, parts, mask "
                            "settings, trained backbone stages) of this run folder (or checkpoint), start from its "
                            "best.pt and train with the adaptation recipe: 150 optimizer steps of 2 images, lr 0.01 "
                            "along a cosine, --augment adapt, and the images resized so their cells reach the size "
                            "the run was trained at. Flags given still win (--epochs replaces the steps, --lr-step "
                            "the cosine); with --config the file's training settings are kept. A different number "
                            "of parts or classes starts only the predictors fresh")
    files.add_argument("--set", action="append", default=None, metavar="SECTION.FIELD=VALUE", dest="overrides",
                       help="set any config field, e.g. --set train.momentum=0.95 --set model.mask_threshold=0.4; "
                            "repeatable, applied last")
    add_config_arguments(parser, _DATA_FLAGS + _MODEL_FLAGS + _TRAIN_FLAGS)
    parser.add_argument("--cytoplasm-weight", type=float, default=None,
                        help="loss weight of cytoplasm pixels (shortcut for --part-weights cytoplasm=W); default 1")
    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt, with its config")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_finetune_args(args: argparse.Namespace) -> Config:
    """The whole :class:`Config` of parsed ``finetune`` arguments (raises ValueError).

    The defaults, or ``--config``, then the model settings of ``--from``, then
    the flags given, then ``--set``. The
    class names set the number of cell classes unless ``model.num_classes`` is set.
    """
    base = Config.from_json(args.config) if args.config else Config()  # the defaults, before anything is given
    overrides = config_overrides(args)
    sets = {}
    for item in args.overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. train.lr=0.002")
        sets[key.strip()] = value
    given = {**overrides, **sets}  # what the user named, which --from never replaces
    if args.from_run is not None:
        overrides = {**_settings_of_run(args.from_run, given, recipe=not args.config), **overrides}
    if args.cytoplasm_weight is not None:
        weights = dict(overrides.get("model.part_weights", base.model.part_weights))
        weights["cytoplasm"] = args.cytoplasm_weight
        overrides["model.part_weights"] = weights
    overrides.update(sets)
    if "data.class_names" in given and "model.num_classes" not in given:
        names = given["data.class_names"]
        if not isinstance(names, str):
            overrides["model.num_classes"] = len(names)
    parts = overrides.get("model.parts", base.model.parts)
    if args.cytoplasm_weight is not None and not isinstance(parts, str) and "cytoplasm" not in parts:
        raise ValueError(f"--cytoplasm-weight needs a part named 'cytoplasm'; parts are {list(parts)}")
    # From a file, the lr schedule is the file's; from the defaults, it follows the weights given here.
    return base.with_overrides(overrides) if args.config else Config.from_overrides(overrides)


def _settings_of_run(run: Path, given: dict, recipe: bool) -> dict:
    from .model import adaptation_overrides  # loads torch: only when asked

    try:
        return adaptation_overrides(run, given, recipe)
    except FileNotFoundError as err:
        raise ValueError(f"--from: {err}") from None


def finetune_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-finetune DATA_DIR --out RUN_DIR [options]``: exit 0 done, 1 failed, 2 bad arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
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
    _setup_logging(parser=parser)
    from .train import fit  # torch and the model load only now: --help and argument errors stay fast

    try:
        history = fit(config, args.data_dir, args.out, resume=args.resume, quiet=args.quiet,
                      command=["cellrcnn-finetune", *argv])
    except (DataError, ValueError, RuntimeError, FloatingPointError, FileNotFoundError) as err:
        logger.error("error: %s", str(err).splitlines()[0] if str(err) else type(err).__name__)
        return 1
    last = history.iloc[-1]
    logger.info("done: %d epochs, results in %s (best.pt, last.pt, history.csv, curves.png)", int(last["epoch"]),
                args.out)
    return 0


def _add_cell_arguments(parser: argparse.ArgumentParser, exported: bool = False) -> None:
    """The options choosing which cells are kept (:mod:`cellrcnn.selection`), for predict, evaluate and export."""
    sel = parser.add_argument_group(
        "which cells", "Defaults: score 0.5 (a package's own choice when the model is one), every cell; a model "
        "trained on crops of one cell keeps the largest complete cell of an image like those crops, and every cell "
        "of a tiled field or a much larger image." + (" The package records the choice in its rdf.yaml."
                                                       if exported else ""))
    sel.add_argument("--score-threshold", type=float, default=None, help="minimum detection score")
    sel.add_argument("--largest", action=argparse.BooleanOptionalAction, default=None,
                     help="keep only the largest complete cell per image (--no-largest: every cell; default: as "
                          "the model was trained, see above)")
    sel.add_argument("--max-cells", type=int, default=None, help="keep at most this many cells per image")


def _cell_choice(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The cell options given (None where not), checked by :class:`~cellrcnn.selection.CellChoice`
    (``parser.error`` otherwise)."""
    from .selection import CellChoice  # numpy only: the command line stays fast

    given = {"score_threshold": args.score_threshold, "largest": args.largest, "max_cells": args.max_cells}
    try:
        CellChoice().replace(**given)
    except ValueError as err:
        parser.error(str(err))
    return given


def _cell_diameter(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'auto', got {text!r}") from None


def _add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """The scale and tile options of ``predict`` and ``evaluate``."""
    scale = parser.add_argument_group(
        "scale and tiles", "Images are resized by the scale the model was trained at (recorded in the checkpoint). "
        "Set --cell-diameter when cells in your images are larger or smaller than in the training images (auto: "
        "estimated in each image), or --scale for the resize factor itself. Images larger than one tile are "
        "predicted in overlapping tiles stitched into one field.")
    group = scale.add_mutually_exclusive_group()
    group.add_argument("--scale", type=float, default=None,
                       help="resize factor from image pixels to network pixels (default: the training scale)")
    group.add_argument("--cell-diameter", type=_cell_diameter, default=None, metavar="PIXELS|auto",
                       help="typical cell diameter in your images, in pixels, or auto to estimate it in each image "
                            "from the cells the model finds at several scales; cells are resized to the size the "
                            "model was trained at")
    scale.add_argument("--tile", type=int, default=None,
                       help="tile side in image pixels (default: 1024 network pixels at the prediction scale)")
    scale.add_argument("--overlap", type=int, default=None,
                       help="overlap of neighbouring tiles in image pixels (default: about one cell diameter)")


def _check_scale_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("scale", "cell_diameter"):
        value = getattr(args, name)
        if value is not None and value != "auto" and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.tile is not None and args.tile < 64:
        parser.error(f"--tile must be at least 64 pixels, got {args.tile}")
    if args.overlap is not None and not 0 <= args.overlap <= (args.tile or args.overlap * 2) // 2:
        parser.error(f"--overlap must lie between 0 and half the tile, got {args.overlap}")


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
    parser = _Parser(prog="cellrcnn-predict", formatter_class=_HelpFormatter,
                     description="Segment cells with a trained model and write label TIFFs, a per-cell table "
                                 "and, on request, ImageJ ROI sets and overlay PNGs.",
                     epilog="Many files at once: run it under torchrun (torchrun --nproc-per-node N --no-python "
                            "cellrcnn-predict ...): each process takes every N-th image, one GPU each (or CPU "
                            "cores), and cells.csv is the same as one process writes.")
    parser.add_argument("model", type=Path, help="checkpoint of a run (best.pt), a run folder, or a bioimage.io "
                                                 "package exported by cellrcnn-export-model (model.zip)")
    parser.add_argument("input", nargs="+", help="image files, folders of images, or patterns such as "
                                                 "'plate1/*.tif' (quoted or expanded by the shell)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    _add_cell_arguments(parser)
    out = parser.add_argument_group("outputs")
    out.add_argument("--pixel-size", type=float, default=None, help="micrometres per pixel (areas in um^2)")
    out.add_argument("--rois", action="store_true", help="also write <image>_rois.zip (ImageJ ROI set)")
    out.add_argument("--overlays", action="store_true", help="also write <image>_overlay.png")
    out.add_argument("--overwrite", action="store_true", help="replace existing results")
    _add_scale_arguments(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--image-glob", default="*", help="pattern of image files in a folder")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: each process "
                                                      "its LOCAL_RANK's GPU)")
    run.add_argument("--batch-size", type=int, default=1, help="images (or tiles of a large image) per forward pass")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    _check_scale_arguments(parser, args)
    choice = _cell_choice(parser, args)
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
    _setup_logging(args.quiet, parser)
    from .export import OUTPUT_SUFFIXES, output_paths  # the heavy imports, after the arguments are checked
    from .io import list_images
    from .predict import Predictor
    from .runtime import barrier, join_process_group

    try:
        images = list(dict.fromkeys(p for i in inputs for p in list_images(i, args.image_glob,
                                                                           OUTPUT_SUFFIXES + ("_masks",))))
        runtime = join_process_group(args.device)
        predictor = Predictor.from_checkpoint(args.model, device=str(runtime.device), scale=args.scale,
                                              cell_diameter=args.cell_diameter)
    except (DataError, ValueError, FileNotFoundError, ImportError) as err:
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
    barrier(runtime)  # every process has looked before any writes
    args.out.mkdir(parents=True, exist_ok=True)
    if predictor.auto_scale:
        logger.info("the scale of each image is estimated from the cells found in it (training scale %.3g)",
                    predictor.config.model.input_scale)
    elif predictor.scale is not None:
        logger.info("images resized by %.3g for the network (%s)", predictor.scale,
                    "given" if args.scale or args.cell_diameter else "the scale the model was trained at")
    return _predict_files(predictor, images, runtime, args, {**choice, "pixel_size": args.pixel_size}, table_path)


def _predict_files(predictor, images: list[Path], runtime, args: argparse.Namespace, options: dict,
                   table_path: Path) -> int:
    """Predict this process's share of ``images``, write each one's files, and the table of all (rank 0)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from .export import export_prediction, write_table
    from .runtime import gather, leave_process_group, shard

    order = {path: i for i, path in enumerate(images)}
    mine = shard(images, runtime)
    if runtime.distributed:
        logger.info("process %d of %d: %d of the %d images", runtime.rank + 1, runtime.world_size, len(mine),
                    len(images))
    tables, failed = [], []
    results = predictor.predict_paths(mine, args.batch_size, tile=args.tile, overlap=args.overlap,
                                      progress=not args.quiet, **options)
    for result in tqdm(results, total=len(mine), desc="predict", unit="image",
                       disable=args.quiet or not runtime.is_main):
        if result.error is not None:
            failed.append(result.error)
            continue
        if args.overlays and result.prediction.image is None:
            logger.warning("%s: predicted in tiles; no overlay PNG is drawn for a whole field (open the image "
                           "with its label TIFFs in Fiji or napari instead)", result.path.name)
        export_prediction(result.prediction, args.out, predictor.parts, args.pixel_size, args.rois, args.overlays,
                          overwrite=args.overwrite)
        tables.append((order[result.path], result.prediction.table))
        logger.info("%s: %d cells", result.prediction.name, len(result.prediction.table))
    gathered = gather((tables, failed), runtime)  # every process's tables and failures, put in image order below
    tables = [t for part, _ in gathered for t in part]
    failed = [f for _, part in gathered for f in part]
    tables = [table for _, table in sorted(tables, key=lambda item: item[0])]
    if tables and runtime.is_main:
        write_table(pd.concat(tables, ignore_index=True), table_path, overwrite=args.overwrite)
    if runtime.is_main:
        logger.info("%d of %d images done, %d cells; results in %s", len(images) - len(failed), len(images),
                    sum(len(t) for t in tables), args.out)
        if failed:
            logger.error("%d image(s) failed:\n%s", len(failed), "\n".join(failed))
    leave_process_group(runtime)
    return 1 if failed else 0


def evaluate_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-evaluate (MODEL.pt | --pred-dir DIR) DATA_DIR --out OUT_DIR``: exit 0, 1 failed, 2 bad arguments."""
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
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    _add_cell_arguments(parser)
    _add_scale_arguments(parser)
    add_config_arguments(parser, _DATA_FLAGS)
    args = parser.parse_args(argv)
    _check_scale_arguments(parser, args)
    choice = _cell_choice(parser, args)
    from .data import CellDataset  # the heavy imports, after --help
    from .io import atomic_write, find_pairs
    from .model import load_checkpoint
    from .report import score_folder, worst_images_figure

    model_path, base = None, None
    if args.pred_dir is None:
        if len(args.paths) != 2:
            parser.error("give MODEL.pt and DATA_DIR, or DATA_DIR with --pred-dir")
        model_path, data_dir = args.paths
        if not model_path.is_file():
            parser.error(f"{model_path}: checkpoint not found")
        try:
            saved = Config.from_saved(load_checkpoint(model_path)["config"])
        except ValueError as err:
            parser.error(str(err))
        base, args.parts = saved.data, saved.model.parts
    else:
        if len(args.paths) != 1:
            parser.error("with --pred-dir give only DATA_DIR")
        data_dir = args.paths[0]
        given = [f"--{n.replace('_', '-')}" for n in ("scale", "cell_diameter", "tile", "overlap")
                 if getattr(args, n) is not None]
        if given:
            parser.error(f"{', '.join(given)} apply to a model's predictions, not to label TIFFs (--pred-dir)")
        if not args.pred_dir.is_dir():
            parser.error(f"{args.pred_dir}: folder not found")
    if not data_dir.is_dir():
        parser.error(f"{data_dir}: folder not found")
    try:
        config = data_config_from_args(args, base)
    except ValueError as err:
        parser.error(str(err))
    outputs = [args.out / n for n in ("per_image.csv", "summary.csv", "worst_images.png")]
    if not args.overwrite and any(p.exists() for p in outputs):
        parser.error(f"{args.out} already holds results; pass --overwrite to replace them or choose another --out")
    _setup_logging(parser=parser)
    try:
        dataset = CellDataset(find_pairs(data_dir, config), config)
        if model_path is not None:
            from .predict import Predictor
            source = Predictor.from_checkpoint(model_path, device=args.device, scale=args.scale,
                                               cell_diameter=args.cell_diameter)
            options = {**choice, "tile": args.tile, "overlap": args.overlap}
        else:
            source, options = args.pred_dir, {"cells_suffix": args.pred_cells_suffix,
                                              "parts_suffix": args.pred_parts_suffix}
        result = score_folder(dataset, args.parts, source, **options)
    except (DataError, ValueError, FileNotFoundError) as err:
        logger.error("error: %s", err)
        return 1
    items = result["items"]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(outputs[0], lambda tmp: result["per_image"].to_csv(tmp, index=False), overwrite=args.overwrite)
    atomic_write(outputs[1], lambda tmp: result["summary"].to_csv(tmp, index=False), overwrite=args.overwrite)
    worst_images_figure(outputs[2], items, result["per_image"], args.parts, overwrite=args.overwrite)
    summary = result["summary"].set_index("metric")
    headline = [m for m in [f"mean {p}_dice" for p in args.parts[1:]] + ["mean cell_dice", "COCO mask AP",
                                                                          "COCO mask AP50"] if m in summary.index]
    logger.info("%d images: %s", len(items), ", ".join(f"{m.replace('mean ', '')} {summary.loc[m, 'value']:.3f}"
                                                         for m in headline))
    at50 = result["summary"].query("threshold == 0.5").set_index("metric")["value"]
    logger.info("at IoU 0.5: precision %.3f, recall %.3f, F1 %.3f, PQ %.3f; results in %s",
                at50["precision"], at50["recall"], at50["f1"], at50["pq"], args.out)
    return 0


def export_model_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-export-model RUN/best.pt --out model.zip``: exit 0 written, 1 failed, 2 bad arguments."""
    parser = _Parser(prog="cellrcnn-export-model", formatter_class=_HelpFormatter,
                     description="Write a trained model as a BioImage Model Zoo (bioimage.io) package: rdf.yaml, "
                                 "weights, documentation, cover, test image and labels. The package is checked "
                                 "with bioimageio.core's model test before it is written.")
    parser.add_argument("model", type=Path, help="checkpoint of a run (best.pt) or a run folder")
    parser.add_argument("--out", type=Path, required=True, help="the package to write (*.zip)")
    about = parser.add_argument_group("what the package says")
    about.add_argument("--name", default=None, help="model name (default: 'cellrcnn model <run folder>')")
    about.add_argument("--description", default=None, help="one sentence: what it segments, in which images")
    about.add_argument("--author", action="append", default=[], metavar="NAME",
                       help="who trained it; repeat for several (default: the login name)")
    about.add_argument("--license", default="CC-BY-4.0",
                       help="SPDX licence id of the weights; it must allow what the training data's licence asks")
    about.add_argument("--cite", nargs=2, action="append", default=[], metavar=("TEXT", "DOI"),
                       help="a paper to cite besides Mask R-CNN (the data set's, yours); repeat for several")
    how = parser.add_argument_group("test image and checks")
    how.add_argument("--test-image", type=Path, default=None,
                     help="the package's test image (default: the run's first validation image, from split.csv)")
    how.add_argument("--skip-test", action="store_true", help="do not run bioimageio.core's model test first")
    how.add_argument("--overwrite", action="store_true", help="replace an existing package")
    _add_cell_arguments(parser, exported=True)
    args = parser.parse_args(argv)
    choice = _cell_choice(parser, args)
    if args.out.suffix.lower() != ".zip":
        parser.error(f"--out must name a .zip file, got {args.out}")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    if not args.out.parent.is_dir():
        parser.error(f"{args.out.parent}: no such folder for --out")
    if not args.model.exists():
        parser.error(f"{args.model}: checkpoint not found")
    if args.test_image is not None and not args.test_image.is_file():
        parser.error(f"{args.test_image}: test image not found")
    _setup_logging(parser=parser)
    try:
        from .selection import CellChoice
        from .share import PackageInfo, export_model

        defaults = PackageInfo()
        info = PackageInfo(name=args.name, description=args.description or defaults.description,
                           authors=tuple(args.author), license=args.license, cite=tuple(map(tuple, args.cite)))
        export_model(args.model, args.out, args.test_image, info, CellChoice().replace(**choice),
                     check=not args.skip_test, overwrite=args.overwrite)
    except ImportError as err:
        logger.error("error: %s; install it with: pip install 'cellrcnn[bioimageio]'", err)
        return 1
    except (DataError, ValueError, FileNotFoundError, FileExistsError) as err:
        logger.error("error: %s", err)
        return 1
    except (RuntimeError, KeyError, OSError) as err:  # a checkpoint that does not fit its config, a disk problem
        logger.error("error: cannot export %s: %s", args.model, str(err).splitlines()[0] if str(err) else err)
        return 1
    return 0
