"""cellrcnn: fine-tune torchvision's Mask R-CNN to segment whole cells and their parts.

The names below load on first use (PEP 562), so ``import cellrcnn`` and the
command-line ``--help`` stay fast: torch and torchvision load only when a model,
dataset or trainer is first touched. ``__all__`` is the user API (docs/api.md);
the submodules hold the rest.
"""

import importlib
import logging

from .utils.lazy import MovedModules

__version__ = "0.1.0"

#: Public name -> module that defines it.
_API = {
    "config": ("BACKBONES", "Config", "DataConfig", "ModelConfig", "TrainConfig"),
    "io": ("DataError", "find_pairs", "read_image", "read_labels", "open_field", "ImageField"),
    "data": ("CellDataset", "check_folder", "make_splits", "build_augmentation"),
    "modeling": ("build_model", "build_backbone", "model_from_checkpoint", "model_config_from_run",
                 "adaptation_overrides", "load_checkpoint", "PartRoIHeads"),
    "evaluation": ("dice", "part_dice", "matching", "coco_mask_ap", "Scored", "evaluate", "score_folder"),
    "inference": ("CellChoice", "Prediction", "Predictor", "measure_cells"),
    "export": ("export_prediction", "PackageInfo", "export_model"),
    "viz.style": ("PART_COLOURS", "part_colour"),
    "engine": ("Trainer", "fit", "sweep", "new_run_dir", "latest_run"),
}
#: Reachable as ``cellrcnn.<name>`` for code written before the API was trimmed; not part of it.
_INTERNAL = {
    "modeling": ("part_mask_loss", "project_parts_on_boxes", "load_matching_state_dict", "paste_parts_in_image",
                 "read_state_dict", "to_label_images"),
    "data": ("whole_cell_targets", "instance_targets", "select_largest", "collate", "write_split_csv"),
    "sample_data": ("synthetic_sample", "synthetic_field", "write_field"),  # sample data: cellrcnn.sample_data
}
#: The layers (subpackages).
_SUBPACKAGES = ("utils", "config", "io", "data", "sample_data", "modeling", "inference", "evaluation", "engine",
                "export", "viz", "cli", "napari_plugin")
#: The flat modules of earlier versions, and the modules that hold their names now (searched in order):
#: ``import cellrcnn.losses`` and ``from cellrcnn.predict import Predictor`` work as they did (utils.lazy.MovedModules).
_MOVED = {"compat": ("utils.compat",), "runtime": ("utils.runtime",), "augment": ("data.augment",),
          "targets": ("data.targets",), "synthetic": ("sample_data",), "model": ("modeling", "utils.runtime"),
          "roi_heads": ("modeling.heads",), "losses": ("modeling.losses",),
          "predict": ("inference", "inference.predictor", "inference.scale"), "tiles": ("inference.tiles",),
          "selection": ("inference.selection",), "metrics": ("evaluation.metrics",),
          "report": ("evaluation.report",), "train": ("engine", "engine.loop", "utils.runtime"),
          "hooks": ("engine.hooks",), "share": ("export.bioimage",), "plots": ("viz.plots",),
          "style": ("viz.style",)}
MovedModules(__name__, _MOVED).install()
_WHERE = {name: module for table in (_INTERNAL, _API) for module, names in table.items() for name in names}

__all__ = [name for names in _API.values() for name in names] + ["plots", "hooks"]


def __getattr__(name: str):
    if name in _SUBPACKAGES or name in _MOVED or name == "zoo":
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
