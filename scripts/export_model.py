#!/usr/bin/env python
"""Share a trained model as a BioImage Model Zoo package (also installed as ``cellrcnn-export-model``).

    python scripts/export_model.py runs/wbc/best.pt --out wbc_model.zip --author "Your Name"

The zip holds rdf.yaml, the weights, documentation, a cover and a test image with its
labels; bioimageio.core's model test runs before it is written. Needs
``pip install 'cellrcnn[bioimageio]'``.
"""

import sys

from cellrcnn.cli.export_model import export_model_main

if __name__ == "__main__":
    sys.exit(export_model_main())
