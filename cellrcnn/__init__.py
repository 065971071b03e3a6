"""cellrcnn: fine-tune torchvision's Mask R-CNN to segment whole cells and their parts.

The names below load on first use (PEP 562), so ``import cellrcnn`` and the
command-line ``--help`` stay fast: torch and torchvision load only when a model,
dataset or trainer is first touched. ``__all__`` is the user API (docs/api.md);
the submodules hold the rest.
"""

import importlib
import logging

__version__ = "0.1.0"

#: Public name -> submodule that defines it.
_API = {
    "config": ("BACKBONES", "Config", "DataConfig", "ModelConfig", "TrainConfig"),
    "io": ("DataError", "find_pairs", "read_image", "read_labels", "open_field", "ImageField"),
    "data": ("CellDataset", "check_folder", "make_splits"),
    "augment": ("build_augmentation",),
    "synthetic": ("synthetic_sample", "synthetic_field", "write_field"),
    "model": ("build_model", "build_backbone", "model_from_checkpoint", "model_config_from_run", "adaptation_overrides",
              "load_checkpoint"),
    "roi_heads": ("PartRoIHeads",),
    "metrics": ("dice", "part_dice", "matching", "coco_mask_ap"),
    "selection": ("CellChoice",),
    "predict": ("Prediction", "Predictor", "measure_cells"),
    "export": ("export_prediction",),
    "share": ("PackageInfo", "export_model"),
    "report": ("Scored", "evaluate", "score_folder"),
    "style": ("PART_COLOURS", "part_colour"),
    "train": ("Trainer", "fit", "sweep", "new_run_dir", "latest_run"),
}
#: Reachable as ``cellrcnn.<name>`` for code written before the API was trimmed; not part of it.
_INTERNAL = {
    "losses": ("part_mask_loss", "project_parts_on_boxes"),
    "model": ("load_matching_state_dict", "paste_parts_in_image", "read_state_dict", "to_label_images"),
    "targets": ("whole_cell_targets", "instance_targets", "select_largest"),
    "data": ("collate", "write_split_csv"),
}
_SUBMODULES = ("plots", "hooks", "config", "io", "augment", "targets", "data", "losses", "roi_heads", "model",
               "train", "predict", "export", "metrics", "report", "style", "synthetic", "cli", "zoo", "share", "tiles",
               "selection")
_WHERE = {name: module for table in (_INTERNAL, _API) for module, names in table.items() for name in names}

__all__ = [name for names in _API.values() for name in names] + ["plots", "hooks"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cellrcnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


logging.getLogger(__name__).addHandler(logging.NullHandler())
