"""Scoring predictions against ground truth: pure metrics, and reports over folders.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".metrics": ("dice", "part_dice", "iou_matrix", "assign", "matching", "coco_mask_ap"),
    ".report": ("Scored", "evaluate", "score_folder"),
})
