"""Sample data, stardist-style: synthetic images for the demo, the tests and the benchmarks.

Not part of the modelling API; nothing in the library imports it.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".sample": ("synthetic_sample",),
    ".field": ("synthetic_field",),
    ".files": ("write_field",),
    ".mosaic": ("wbc_mosaic",),
    ".crops": ("write_single_cell_crops",),
})
