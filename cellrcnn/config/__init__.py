"""The one config tree (:class:`Config`: ``model``, ``data`` and ``train`` sections), built once from
the CLI, a JSON file or a notebook; each function gets only its section.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".fields": ("BACKBONES", "WEIGHT_CHOICES", "MASK_SIZES", "MASK_ALIGNMENTS", "NORMS", "PREDICTOR_INITS",
                "ENCODINGS", "TARGETS", "AUGMENTATIONS", "LR_SCHEDULES", "PROJECTIONS", "BACKBONE_TABLE",
                "COCO_BACKBONES", "parse_field_value"),
    ".model": ("ModelConfig",),
    ".data": ("DataConfig",),
    ".train": ("BEST_METRICS", "best_metrics", "SCHEDULES", "ADAPT_RECIPE", "TrainConfig"),
    ".tree": ("Config", "rename_settings"),
})
