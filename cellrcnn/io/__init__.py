"""Reading microscopy images and label masks, and pairing them in a folder.

Every problem with a file raises :class:`DataError`, whose message names the file
and says what to do; scripts show it as one line, without a traceback.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".files": ("DataError", "IMAGE_EXTENSIONS", "read_raw", "read_raw_axes"),
    ".layouts": ("select_channels",),
    ".intensity": ("three_channels", "normalize_image", "image_from_array", "read_image"),
    ".fields": ("LEVEL_PIXELS", "ImageField", "open_field", "field_from_array"),
    ".masks": ("read_labels", "map_part_values", "CellMask", "cell_masks_from_labels", "cell_masks_from_instances"),
    ".geojson": ("GeoObject", "mask_geometry", "rasterize", "read_geojson", "geojson_masks"),
    ".folders": ("Pair", "list_images", "Matching", "match_files", "find_pairs", "read_classes_csv", "class_of",
                 "write_pair"),
    "..utils.files": ("atomic_write", "safe_stem"),
})
