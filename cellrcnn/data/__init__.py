"""Training data: the dataset, its targets (whole cells with parts), augmentation and splits.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".dataset": ("derived_seed", "load_sample", "build_target", "random_crop", "CellDataset", "cell_sizes", "collate",
                 "check_folder"),
    ".splits": ("split_pairs", "make_splits", "write_split_csv"),
    ".augment": ("build_augmentation", "apply_augmentation"),
    ".targets": ("whole_cell_targets", "instance_targets", "parts_from_instances", "select_largest",
                 "largest_complete", "largest_complete_label", "border_labels"),
})
