"""Outputs: label TIFFs, ROI sets, overlays, tables, COCO and QuPath GeoJSON files of a prediction, and
bioimage.io packages.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".files": ("OUTPUTS", "OUTPUT_SUFFIXES", "output_paths", "write_label_tiff", "write_rois", "overlay_rgb",
               "write_overlay", "write_table", "export_prediction"),
    ".coco": ("CocoImageCells", "coco_dataset", "merge_datasets", "write_coco"),
    ".geojson": ("cell_features", "write_geojson"),
    ".bioimage": ("PackageInfo", "export_model", "check_package"),
})
