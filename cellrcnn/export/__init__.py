"""Outputs: label TIFFs, ROI sets, overlays and tables of a prediction, and bioimage.io packages.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".files": ("OUTPUTS", "OUTPUT_SUFFIXES", "output_paths", "write_label_tiff", "write_rois", "overlay_rgb",
               "write_overlay", "write_table", "export_prediction"),
    ".bioimage": ("PackageInfo", "export_model", "check_package"),
})
