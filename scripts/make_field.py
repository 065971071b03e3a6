#!/usr/bin/env python
"""Write a synthetic fluorescence field: ``OUT/<name>.tif`` + ``<name>_cells.tif`` + ``<name>_masks.tif``.

The image is a two-channel uint16 ImageJ hyperstack (channel 0 nucleus stain, channel 1
membrane stain), uncompressed so it can be memory-mapped; ``_cells`` holds the cell
instances, ``_masks`` the parts (0 background, 1 cytoplasm, 2 nucleus). A folder of
fields trains as is:

    python scripts/make_field.py data/fields --size 4096 --seed 0
    cellrcnn-finetune data/fields --encoding cells+parts --crop 256 --channels 0,1 ...

The output is fully determined by the arguments. An 8192-pixel field takes about 15 s
and 0.8 GB of memory.
"""

import argparse
import logging
import sys
from pathlib import Path

from cellrcnn.sample_data.field import synthetic_field
from cellrcnn.sample_data.files import write_field

log = logging.getLogger("make_field")


def size_arg(text: str) -> tuple[int, int]:
    """``4096`` or ``3000x4000`` (height x width)."""
    try:
        values = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW in pixels, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 16:
        raise argparse.ArgumentTypeError(f"expected N or HxW of at least 16 pixels, got {text!r}")
    return (values[0], values[0]) if len(values) == 1 else values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write into (created if missing)")
    parser.add_argument("--size", type=size_arg, default=(4096, 4096), metavar="N|HxW",
                        help="field side, or height x width, in pixels (default: 4096)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--cell-diameter", type=float, default=40.0,
                        help="mean cell diameter in pixels, each varying by ±20%% (default: %(default)s)")
    parser.add_argument("--coverage", type=float, default=0.3,
                        help="fraction of the field covered by cells, up to about 0.4 (default: %(default)s)")
    parser.add_argument("--touching", type=float, default=0.15,
                        help="fraction of cells that touch another (default: %(default)s)")
    parser.add_argument("--pixel-size", type=float, default=0.325,
                        help="micrometres per pixel, stored so Fiji measures in microns (default: %(default)s)")
    parser.add_argument("--name", default="field", help="stem of the three files (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.seed < 0:
        parser.error("--seed must be non-negative")
    if not args.pixel_size > 0:
        parser.error("--pixel-size must be positive")
    if not args.cell_diameter >= 10:
        parser.error("--cell-diameter must be at least 10 pixels")
    if not 0 <= args.coverage <= 0.6 or not 0 <= args.touching <= 1:
        parser.error("--coverage must lie in [0, 0.6] and --touching in [0, 1]")
    if not args.name or "/" in args.name or args.name.startswith("."):
        parser.error(f"--name must be a plain file stem, got {args.name!r}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"{args.out} exists and is not a folder")
    existing = [p.name for p in (args.out / f"{args.name}{s}.tif" for s in ("", "_cells", "_masks")) if p.exists()]
    if existing and not args.overwrite:
        log.error("%s already holds %s; pass --overwrite to replace them", args.out, ", ".join(existing))
        return 2
    try:
        field = synthetic_field(args.size, args.seed, args.cell_diameter, coverage=args.coverage,
                                touching=args.touching)
    except ValueError as err:
        parser.error(str(err))
    try:
        paths = write_field(args.out, field, name=args.name, pixel_size=args.pixel_size, overwrite=args.overwrite)
    except OSError as err:
        log.error("error: %s", err)
        return 1
    H, W = field["cells"].shape
    log.info("wrote %s (%dx%d, %d cells) with %s and %s", paths["image"], W, H, len(field["centres"]),
             paths["cells"].name, paths["parts"].name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
