"""What every command shares: the parser, config flags, logging and messages in flag terms."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import logging
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from ..config.data import DataConfig
from ..config.fields import (AUGMENTATIONS, BACKBONES, ENCODINGS, LR_SCHEDULES, MASK_ALIGNMENTS, MASK_SIZES, NORMS,
                             PROJECTIONS, SINGLE_RULES, TARGETS, _field_types, parse_field_value)
from ..config.train import SCHEDULES
from ..config.tree import _SECTIONS, rename_settings
from ..io.files import DataError
from ..utils.errors import StoppedTogether

__all__ = ["add_config_arguments", "command", "config_overrides", "data_config_from_args", "setup_logging"]

logger = logging.getLogger(__name__)


#: predict's and evaluate's --tta.
TTA_HELP = ("predict each image of one tile in its 8 flips and 90-degree turns and merge them per cell (test-time augmentation: 8 times slower; tiled fields are predicted once)")

MAX_SHOWN = 20  # problems listed one by one; the rest are counted


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None: those flags say in their help what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
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
        if not getattr(record, "verbatim", False):  # a traceback quotes code: it is never reworded
            record.msg, record.args = in_cli_terms(record.getMessage(), self.parser), None
        return True


#: Command-line shortcuts: (argument group, section, fields). Flag names, types, defaults and help come from
#: the config dataclasses; every other field is reachable with --set section.field=value.
DATA_FLAGS = (
    ("finding images and masks", "data", ("image_glob", "mask_glob", "mask_suffix", "skip_unpaired")),
    ("reading masks", "data", ("encoding", "part_values", "snap_values", "cells_suffix", "nuclei_suffix",
                               "coco_cell", "coco_parts", "classes_csv", "class_names", "targets", "min_area",
                               "percentiles")),
    ("validation split and augmentation", "data", ("val_fraction", "val_dir", "split_seed", "augment")),
    ("channels, stacks and crops", "data", ("channels", "projection", "crop")),
    ("units", "data", ("pixel_size",)),
)
MODEL_FLAGS = (("model", "model", ("backbone", "weights", "min_size", "max_size", "parts", "part_weights",
                                    "class_specific_parts", "mask_size", "edge_weight", "dice_weight", "part_head", "part_rois_per_image", "part_box_scale", "norm", "mask_alignment",
                                    "mask_threshold")),)
TRAIN_FLAGS = (
    ("training", "train", ("epochs", "steps", "batch_size", "accumulate", "lr", "lr_schedule", "lr_step",
                           "lr_gamma", "lr_floor", "warmup_epochs", "momentum", "weight_decay", "clip_grad_norm",
                           "device", "amp", "val_every", "best_metric", "best_smoothing", "patience",
                           "max_minutes", "size_model")),
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
            if hint is bool and not default:
                group.add_argument(flag, dest=key, action="store_true", default=argparse.SUPPRESS, help=help_text)
            elif hint is bool or hint == (bool | None):  # on by default: --no-<name> turns it off
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


def check_out_folder(parser: argparse.ArgumentParser, out: Path) -> None:
    """Refuse, as one line and before any model loads, an ``--out`` that is a file or lies where nothing can be
    written (the folder itself is made only later, once the inputs have been read)."""
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file; give a folder (it is made if missing)")
    nearest = next(p for p in (out, *out.parents) if p.exists())
    try:  # a real write, not os.access: that says yes to root and to read-only mounts alike
        with tempfile.NamedTemporaryFile(dir=nearest, prefix=".cellrcnn-probe-"):
            pass
    except OSError as err:
        parser.error(f"--out {out}: nothing can be written in {nearest} ({err.strerror or err}); choose a folder "
                     f"you can write to")


def comma_separated(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(","))


class _Std(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout``/``sys.stderr`` is when a line is logged (a notebook's, a test's
    capture), not to the stream of the moment it was made."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.std = name

    @property
    def stream(self):
        return getattr(sys, self.std)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it; the property decides
        pass


def setup_logging(quiet: bool = False, parser: argparse.ArgumentParser | None = None) -> None:
    """Messages as plain lines: information on stdout, warnings and errors on stderr (so that ``2>`` keeps what went
    wrong), in the command's own flags when ``parser`` is given. Calling it again replaces what it set up."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    for old in [h for h in root.handlers if isinstance(h, _Std)]:
        root.removeHandler(old)
    for name, keep in (("stdout", lambda r: r.levelno < logging.WARNING), ("stderr", lambda r: r.levelno >= logging.WARNING)):
        handler = _Std(name)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(keep)
        if parser is not None:  # the library's messages name config fields; the user typed flags
            handler.addFilter(_InCliTerms(parser))
        root.addHandler(handler)
    # tifffile logs its own error for a corrupt file; the DataError raised for it says it better, naming the file.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)


#: What a user's files, flags or machine cause (a bad image, a missing file, a full disk): one line, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, ValueError, OSError, FloatingPointError, StoppedTogether)


def one_line(err: BaseException) -> str:
    """The first line of an error's message (the library's messages are one line; a dependency's may be a page)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _report(err: BaseException) -> int:
    """Say what stopped a command, and return its exit code (see :func:`command`)."""
    torch = sys.modules.get("torch")
    if isinstance(err, KeyboardInterrupt):
        logger.error("interrupted; what was finished is kept (predict: --resume finishes the rest, "
                     "finetune: --resume continues from last.pt)")
        return 130
    if isinstance(err, ImportError):
        logger.error("error: %s; install what is missing with: pip install 'cellrcnn[napari,bioimageio]'",
                     one_line(err))
        return 2
    if torch is not None and isinstance(err, torch.OutOfMemoryError):
        logger.error("error: the GPU ran out of memory (%s); use a smaller --batch-size, smaller --tile or "
                     "--min-size, or --device cpu", one_line(err)[:120])
        return 2
    if isinstance(err, USER_ERRORS):
        logger.error("error: %s", one_line(err))
        return 2
    # a true bug: the traceback is what its report needs
    logger.error("%s", "".join(traceback.format_exception(err)).rstrip(), extra={"verbatim": True})
    logger.error("cellrcnn %s stopped on an internal error: this is a bug in cellrcnn, not a problem with your files. "
                 "Please report it to the cellrcnn developers with the command you ran and the traceback above.",
                 __version__)
    return 1


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A command's entry point: exit code 0 done, 2 when the input is at fault (one line on stderr says which file
    and what to do), 1 for a bug in cellrcnn (its traceback, and a request to report it), 130 when interrupted."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except (SystemExit, GeneratorExit):
            raise
        except BaseException as err:
            if not any(isinstance(h, _Std) for h in logging.getLogger().handlers):
                setup_logging()  # it failed before the command set up its messages: they still reach stderr
            return _report(err)

    return run


def add_cell_arguments(parser: argparse.ArgumentParser, exported: bool = False) -> None:
    """The options choosing which cells are kept (:mod:`cellrcnn.inference.selection`), for predict, evaluate and export."""
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
    sel.add_argument("--single-rule", choices=SINGLE_RULES, default=None,
                     help="how the single-cell choice picks its cell among the complete ones: the largest, the "
                          "largest with a nucleus, or the best-scoring with a nucleus (default: nucleated, so that "
                          "a large false detection without a nucleus is never the kept cell)")


def cell_choice(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The cell options given (None where not), checked by :class:`~cellrcnn.inference.selection.CellChoice`
    (``parser.error`` otherwise)."""
    from ..inference.selection import CellChoice  # numpy only: the command line stays fast

    given = {"score_threshold": args.score_threshold, "largest": args.largest, "max_cells": args.max_cells,
             "single_rule": args.single_rule}
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


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
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


def check_scale_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("scale", "cell_diameter"):
        value = getattr(args, name)
        if value is not None and value != "auto" and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.tile is not None and args.tile < 64:
        parser.error(f"--tile must be at least 64 pixels, got {args.tile}")
    if args.overlap is not None and not 0 <= args.overlap <= (args.tile or args.overlap * 2) // 2:
        parser.error(f"--overlap must lie between 0 and half the tile, got {args.overlap}")
