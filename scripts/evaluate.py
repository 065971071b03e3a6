#!/usr/bin/env python
"""Score a model or written label TIFFs against ground truth (also installed as ``cellrcnn-evaluate``).

    python scripts/evaluate.py runs/wbc/best.pt DATA_DIR --out evaluation
    python scripts/evaluate.py --pred-dir predictions DATA_DIR --out evaluation [data options]
"""

import sys

from cellrcnn.cli.evaluate import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
