"""cellrcnn-export-model: a bioimage.io package of a trained model."""

from __future__ import annotations

import logging
from pathlib import Path

from .common import command, HelpFormatter, Parser, add_cell_arguments, cell_choice, setup_logging

__all__ = ["export_model_main"]

logger = logging.getLogger(__name__)


@command
def export_model_main(argv: list[str] | None = None) -> int:
    """``cellrcnn-export-model RUN/best.pt --out model.zip``: exit 0 done, 2 when the input is at fault (one line says what to do), 1 a bug."""
    parser = Parser(prog="cellrcnn-export-model", formatter_class=HelpFormatter,
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
    add_cell_arguments(parser, exported=True)
    args = parser.parse_args(argv)
    choice = cell_choice(parser, args)
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
    setup_logging(parser=parser)
    try:
        from ..export.bioimage import PackageInfo, export_model
    except ImportError as err:
        logger.error("error: %s; install it with: pip install 'cellrcnn[bioimageio]'", err)
        return 2
    from ..inference.selection import CellChoice

    defaults = PackageInfo()
    info = PackageInfo(name=args.name, description=args.description or defaults.description,
                       authors=tuple(args.author), license=args.license, cite=tuple(map(tuple, args.cite)))
    export_model(args.model, args.out, args.test_image, info, CellChoice().replace(**choice),
                 check=not args.skip_test, overwrite=args.overwrite)
    return 0
