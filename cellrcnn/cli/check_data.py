"""cellrcnn-check-data: check a training folder before training."""

from __future__ import annotations

import logging
from pathlib import Path

from ..io.files import DataError
from .common import (command, DATA_FLAGS, MAX_SHOWN, HelpFormatter, Parser, add_config_arguments, comma_separated,
                     data_config_from_args, setup_logging)

__all__ = ["check_data_main"]

logger = logging.getLogger(__name__)


@command
def check_data_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-check-data DATA_DIR [data options]``: exit 0 usable, 1 problems found, 2 bad arguments."""
    parser = Parser(
        prog="cellrcnn-check-data",
        description="Read every image and mask of a folder as training would, summarise it and list every problem.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("data_dir", type=Path, help="folder of images and masks")
    parser.add_argument("--parts", type=comma_separated, default=("background", "cytoplasm", "nucleus"),
                        metavar="NAME,...", help="part names, background first, in the order of --part-values")
    add_config_arguments(parser, DATA_FLAGS)
    args = parser.parse_args(argv)
    try:
        config = data_config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if len(args.parts) != len(config.part_values):
        parser.error(f"--parts names {len(args.parts)} parts but --part-values gives {len(config.part_values)} values")
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir}: folder not found")
    setup_logging(parser=parser)
    try:
        from ..data.dataset import check_folder  # loads torch: after the arguments are checked

        report = check_folder(args.data_dir, config, part_names=args.parts)
    except DataError as err:
        logger.error("problem: %s", err)
        return 1
    table, problems = report["table"], report["problems"]
    if len(table):
        fractions = table[[f"{p}_fraction" for p in args.parts]].mean()
        logger.info("%s: %d usable images, %d cells (%.2f per image, %d images without a cell)",
                    args.data_dir, len(table), int(table["cells"].sum()), float(table["cells"].mean()),
                    int((table["cells"] == 0).sum()))  # plain numbers: napari's test plugin makes numpy ones text
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
    for problem in problems[:MAX_SHOWN]:
        logger.error("problem: %s", problem)
    if len(problems) > MAX_SHOWN:
        logger.error("... and %d more problems of the same kinds", len(problems) - MAX_SHOWN)
    if problems:
        logger.error("%d problem(s) found; fix them or leave those files out before training", len(problems))
        return 1
    logger.info("no problems found")
    return 0
