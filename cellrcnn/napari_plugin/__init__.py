"""cellrcnn in napari: a Predict widget, a Fine-tune widget and a reader for run folders and packages.

Install with ``pip install 'cellrcnn[napari]'``; napari finds the plugin through
its npe2 manifest (``napari.yaml``). The widgets only gather settings and show
results: every action is one call into cellrcnn's public API
(:meth:`cellrcnn.Predictor.predict_steps`, :func:`cellrcnn.export.export_prediction`,
:func:`cellrcnn.fit`), run in a napari thread worker so the viewer stays responsive.
"""

from ._finetune import FinetuneWidget
from ._predict import PredictWidget
from ._reader import get_reader

__all__ = ["PredictWidget", "FinetuneWidget", "get_reader"]
