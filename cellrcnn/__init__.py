"""cellrcnn: fine-tune torchvision's Mask R-CNN to segment whole cells and their parts."""

import logging

from .config import BACKBONES, Config, DataConfig, ModelConfig, TrainConfig
from .losses import part_mask_loss, project_parts_on_boxes
from .model import build_model, load_checkpoint, load_matching_state_dict, model_from_checkpoint, paste_parts_in_image, read_state_dict, to_label_images
from .roi_heads import PartRoIHeads
from .synthetic import synthetic_sample
from .targets import instance_targets, select_largest, whole_cell_targets
from .io import DataError, find_pairs, read_image, read_labels
from .data import CellDataset, check_folder, collate, make_splits, write_split_csv
from .augment import build_augmentation
from .metrics import coco_mask_ap, dice, matching, part_dice
from .predict import Prediction, Predictor, measure_cells
from .export import export_prediction
from .report import Scored, evaluate
from .style import PART_COLOURS, part_colour
from .train import fit, latest_run, new_run_dir, sweep
from . import plots

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "Config",
    "DataConfig",
    "TrainConfig",
    "ModelConfig",
    "PartRoIHeads",
    "build_model",
    "load_matching_state_dict",
    "part_mask_loss",
    "paste_parts_in_image",
    "project_parts_on_boxes",
    "read_state_dict",
    "to_label_images",
    "synthetic_sample",
    "whole_cell_targets",
    "instance_targets",
    "select_largest",
    "DataError",
    "find_pairs",
    "read_image",
    "read_labels",
    "CellDataset",
    "check_folder",
    "collate",
    "make_splits",
    "write_split_csv",
    "build_augmentation",
    "dice",
    "part_dice",
    "fit",
    "load_checkpoint",
    "model_from_checkpoint",
    "matching",
    "coco_mask_ap",
    "Prediction",
    "Predictor",
    "measure_cells",
    "export_prediction",
    "Scored",
    "evaluate",
    "PART_COLOURS",
    "part_colour",
    "sweep",
    "new_run_dir",
    "latest_run",
    "plots",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
