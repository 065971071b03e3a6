"""Figures: part colours, training curves, samples and predictions (matplotlib).
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".style": ("PART_COLOURS", "part_colour"),
})
