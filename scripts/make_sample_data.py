#!/usr/bin/env python
"""Write the bundled synthetic sample: ``OUT/images/sample_NN.png`` + ``OUT/masks/sample_NN.png``.

Masks hold part labels 0 (background), 1 (cytoplasm), 2 (nucleus). The output is
fully determined by the seeds, so ``make sample`` reproduces ``data/sample``.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
from skimage.io import imsave

from cellrcnn import synthetic_sample

log = logging.getLogger("make_sample_data")


def write_png(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    imsave(tmp, array, check_contrast=False)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write (for example data/sample)")
    parser.add_argument("--count", type=int, default=12, help="number of images (default: %(default)s)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.count < 1 or args.size < 32:
        parser.error("--count must be at least 1 and --size at least 32")
    existing = sorted(args.out.glob("*/sample_*.png"))
    if existing and not args.overwrite:
        log.error("%s already holds %d sample files; pass --overwrite to replace them", args.out, len(existing))
        return 2
    for sub in ("images", "masks"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        sample = synthetic_sample(seed=i, size=(args.size, args.size))
        write_png(args.out / "images" / f"sample_{i:02d}.png", sample["image"])
        write_png(args.out / "masks" / f"sample_{i:02d}.png", sample["parts"])
    log.info("wrote %d image/mask pairs to %s", args.count, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
