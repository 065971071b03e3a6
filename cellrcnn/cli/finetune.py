"""cellrcnn-finetune: train or fine-tune a model on a folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..config.tree import Config
from .common import (command, DATA_FLAGS, MODEL_FLAGS, TRAIN_FLAGS, HelpFormatter, Parser, add_config_arguments,
                     check_out_folder, config_overrides, setup_logging)

__all__ = ["finetune_main"]

logger = logging.getLogger(__name__)


def finetune_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cellrcnn-finetune",
        description="Fine-tune a part-aware Mask R-CNN on a folder of microscopy images and masks. Settings come "
                    "from the defaults, or --config FILE, then the model of --from RUN, then the flags given, "
                    "then --set.",
        formatter_class=HelpFormatter,
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
    add_config_arguments(parser, DATA_FLAGS + MODEL_FLAGS + TRAIN_FLAGS)
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
        weights = overrides.get("model.part_weights", base.model.part_weights)
        if isinstance(weights, str):
            raise ValueError("--cytoplasm-weight sets one part's weight and --part-weights auto measures them all; "
                             "give one of the two")
        weights = dict(weights)
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
    from ..modeling.checkpoint import adaptation_overrides  # loads torch: only when asked

    try:
        return adaptation_overrides(run, given, recipe)
    except FileNotFoundError as err:
        raise ValueError(f"--from: {err}") from None


@command
def finetune_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-finetune DATA_DIR --out RUN_DIR [options]``: exit 0 done, 2 when the input is at fault (one line says what to do), 1 a bug."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = finetune_parser()
    args = parser.parse_args(argv)
    check_out_folder(parser, args.out)
    try:
        config = config_from_finetune_args(args)
        from ..modeling.part_heads import check_part_head  # loads torch: only once the flags are read

        check_part_head(config.model.part_head)
    except ValueError as err:
        parser.error(str(err))
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir}: folder not found")
    if args.resume and not (args.out / "last.pt").is_file():
        parser.error(f"--resume: {args.out} holds no last.pt to continue from")
    if not args.resume and (args.out / "last.pt").exists():
        parser.error(f"{args.out} already holds a run; pass --resume to continue it or choose another --out")
    setup_logging(parser=parser)
    from ..engine.runs import fit

    history = fit(config, args.data_dir, args.out, resume=args.resume, quiet=args.quiet,
                  command=["cellrcnn-finetune", *argv])
    last = history.iloc[-1]
    logger.info("done: %d epochs, results in %s (best.pt, last.pt, history.csv, curves.png)", int(last["epoch"]),
                args.out)
    return 0
