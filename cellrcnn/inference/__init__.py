"""Prediction: the :class:`Predictor` (whole images, tiles, batches, files), the cells kept, the
per-cell table, and packaged models.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".predictor": ("Predictor", "PathResult"),
    ".measure": ("Prediction", "measure_cells"),
    ".scale": ("prediction_scale", "scale_from_diameters"),
    ".selection": ("CellChoice",),
    ".tiles": ("Tile", "tile_grid", "Stitcher"),
    ".package": ("CellLabels", "Package", "is_package", "read_package"),
})
