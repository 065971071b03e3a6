#!/usr/bin/env python
"""Predict cells with a trained model (also installed as ``cellrcnn-predict``).

    python scripts/predict.py runs/wbc/best.pt IMAGE_OR_FOLDER --out predictions [--rois] [--overlays]

Per image: <name>_cells.tif (uint16 cell labels) and <name>_parts.tif (uint8 part
labels), plus cells.csv with one row per cell for the whole run.
"""

import sys

from cellrcnn.cli.predict import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
