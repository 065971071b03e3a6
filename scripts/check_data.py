#!/usr/bin/env python
"""Check a folder of images and masks before training (also installed as ``cellrcnn-check-data``).

    python scripts/check_data.py ../shared/datasets/wbc_jtsc --image-glob '*.bmp' --mask-glob '*.png' --part-values 0,128,255
"""

import sys

from cellrcnn.cli.check_data import check_data_main

if __name__ == "__main__":
    sys.exit(check_data_main())
