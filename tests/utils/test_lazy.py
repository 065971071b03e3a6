"""The module paths of earlier versions import as they did (utils.lazy.MovedModules)."""

import importlib
import subprocess
import sys

import pytest

#: Every module of the last flat version (before the move to layers, 97c1b4c~1) and its ``__all__`` there.
OLD_MODULES = {
    "augment": ("build_augmentation", "apply_augmentation",),
    "cli": ("add_config_arguments", "config_overrides", "data_config_from_args", "check_data_main", "finetune_main",
            "predict_main", "evaluate_main", "export_model_main",),
    "compat": ("BatchNormBase", "mobilenet_extractor", "resnet_fpn_extractor", "setup_scales",),
    "config": ("BACKBONES", "WEIGHT_CHOICES", "MASK_SIZES", "MASK_ALIGNMENTS", "NORMS", "PREDICTOR_INITS", "ENCODINGS",
               "TARGETS", "AUGMENTATIONS", "LR_SCHEDULES", "PROJECTIONS", "BEST_METRICS", "best_metrics", "SCHEDULES",
               "ADAPT_RECIPE", "DataConfig", "ModelConfig", "TrainConfig", "Config", "parse_field_value",
               "rename_settings",),
    "data": ("derived_seed", "load_sample", "build_target", "random_crop", "CellDataset", "cell_sizes", "collate",
             "split_pairs", "make_splits", "write_split_csv", "check_folder",),
    "export": ("OUTPUTS", "OUTPUT_SUFFIXES", "output_paths", "write_label_tiff", "write_rois", "overlay_rgb",
               "write_overlay", "write_table", "export_prediction",),
    "hooks": ("HookBase", "MetricWatch", "Validation", "BestCheckpoint", "HistoryWriter", "EpochLog", "EarlyStopping",
              "Callback", "Cancel", "Cancelled",),
    "io": ("DataError", "Pair", "IMAGE_EXTENSIONS", "LEVEL_PIXELS", "list_images", "read_raw", "read_raw_axes",
           "select_channels", "three_channels", "normalize_image", "image_from_array", "read_image", "ImageField",
           "open_field", "field_from_array", "read_labels", "map_part_values", "Matching", "match_files", "find_pairs",
           "read_classes_csv", "class_of", "atomic_write", "safe_stem", "write_pair",),
    "losses": ("project_parts_on_boxes", "part_mask_loss",),
    "metrics": ("dice", "part_dice", "iou_matrix", "assign", "matching", "coco_mask_ap",),
    "model": ("build_model", "build_backbone", "resolve_device", "load_checkpoint", "model_from_checkpoint",
              "adaptation_overrides", "to_label_images", "paste_labels", "paste_parts_in_image", "PartRCNNTransform",
              "load_matching_state_dict", "resolve_norm", "model_config_from_run",),
    "plots": ("show_samples", "plot_part_fractions", "plot_history", "LivePlot", "plot_sweep", "show_predictions",
              "plot_nc_ratio",),
    "predict": ("Prediction", "PathResult", "Predictor", "measure_cells", "prediction_scale", "scale_from_diameters",
                "NETWORK_TILE", "EDGE_MARGIN", "SCALE_LADDER",),
    "report": ("Scored", "evaluate", "score_folder", "truth_label_images", "worst_images_figure", "THRESHOLDS",),
    "roi_heads": ("PartRoIHeads", "AlignedMultiScaleRoIAlign", "select_class_parts", "part_inference",),
    "runtime": ("Runtime", "join_process_group", "shard", "barrier", "gather", "leave_process_group",),
    "selection": ("CellChoice", "kept_cells", "keeps_largest", "looks_like_training_crops", "border_labels",
                  "CROP_LIKE",),
    "share": ("PackageInfo", "export_model", "check_package", "input_pixels", "MASK_RCNN_DOI",),
    "style": ("PART_COLOURS", "part_colour",),
    "synthetic": ("synthetic_sample", "synthetic_field", "write_field", "wbc_mosaic",),
    "targets": ("whole_cell_targets", "instance_targets", "parts_from_instances", "select_largest", "largest_complete",
                "largest_complete_label", "border_labels",),
    "tiles": ("Tile", "tile_grid", "grid_overlap", "Stitcher", "relabel",),
    "train": ("Trainer", "fit", "sweep", "new_run_dir", "latest_run", "Runtime", "validate", "lr_factor",
              "steps_per_epoch", "sizes_for_cell_size", "save_checkpoint", "epoch_seed",),
    "zoo": ("CellLabels", "Package", "is_package", "read_package", "PACKAGE_SUFFIXES",),}
def test_every_old_module_imports_with_every_name_it_had():
    """Both ways, in a fresh interpreter so that nothing imported before helps: ``import cellrcnn.X`` then
    ``cellrcnn.X.name``, and ``from cellrcnn.X import name``; each name is the object of its new home."""
    code = ["import importlib, cellrcnn", "failed = []"]
    for module, names in OLD_MODULES.items():
        code += [f"import cellrcnn.{module}",
                 f"from cellrcnn.{module} import {', '.join(names)}",
                 f"failed += [n for n in {names!r} if getattr(cellrcnn.{module}, n) is not globals()[n]]",
                 f"assert cellrcnn.{module} is importlib.import_module('cellrcnn.{module}')"]
    code.append("assert not failed, failed")
    result = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", "\n".join(code)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_an_old_path_says_where_its_names_live_now():
    sys.modules.pop("cellrcnn.losses", None)
    with pytest.warns(DeprecationWarning, match="cellrcnn.losses is now cellrcnn.modeling.losses"):
        old = importlib.import_module("cellrcnn.losses")
    from cellrcnn.modeling import losses

    assert old.part_mask_loss is losses.part_mask_loss
    assert "part_mask_loss" in dir(old) and old.__all__ == losses.__all__
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        old.nothing_here
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("cellrcnn.never_was")
