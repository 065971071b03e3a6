"""The model: torchvision's ``GeneralizedRCNN`` composed with a part mask head, built from the
model config; its transform, pasting, losses, weights and checkpoints.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".build": ("build_model",),
    ".backbone": ("build_backbone", "resolve_norm"),
    ".heads": ("PartRoIHeads",),
    ".part_heads": ("PartHead", "register_part_head", "build_part_head", "part_head_names"),
    ".losses": ("part_mask_loss", "project_parts_on_boxes"),
    ".transform": ("PartRCNNTransform", "predict_labels"),
    ".paste": ("to_label_images", "paste_labels", "paste_parts_in_image"),
    ".weights": ("read_state_dict", "load_matching_state_dict"),
    ".checkpoint": ("load_checkpoint", "model_from_checkpoint", "run_checkpoint", "adaptation_overrides",
                    "model_config_from_run"),
})
