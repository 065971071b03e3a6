#!/usr/bin/env python
"""Fine-tune on a folder of microscopy images (also installed as ``cellrcnn-finetune``).

    python scripts/finetune.py DATA_DIR --out RUN_DIR [options]      # --help lists them, grouped

Run it under ``torchrun --nproc_per_node=N`` to train on N GPUs.
"""

import sys

from cellrcnn.cli.finetune import finetune_main

if __name__ == "__main__":
    sys.exit(finetune_main())
