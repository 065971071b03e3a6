"""Training and validation splits: drawn once from a seed, and saved with the run."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..config.data import DataConfig
from ..io.folders import Pair, find_pairs
from ..utils.files import atomic_write

__all__ = ["split_pairs", "make_splits", "write_split_csv"]


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> dict[str, list[Pair]]:
    """A reproducible random split into ``train`` and ``val``.

    At least one image goes to validation when ``val_fraction > 0`` and there are
    two or more images; the order inside each split follows the input.
    """
    n_val = int(round(len(pairs) * val_fraction))
    if val_fraction > 0 and len(pairs) > 1:
        n_val = min(max(n_val, 1), len(pairs) - 1)
    chosen = set(np.random.default_rng(seed).permutation(len(pairs))[:n_val].tolist())
    return {"train": [p for i, p in enumerate(pairs) if i not in chosen],
            "val": [p for i, p in enumerate(pairs) if i in chosen]}


def make_splits(folder: str | os.PathLike, config: DataConfig) -> dict[str, list[Pair]]:
    """Training and validation pairs: from ``config.val_dir`` when given, else a seeded split of ``folder``."""
    pairs = find_pairs(folder, config)
    if config.val_dir:
        return {"train": pairs, "val": find_pairs(config.val_dir, config)}
    return split_pairs(pairs, config.val_fraction, config.split_seed)


def write_split_csv(path: str | os.PathLike, splits: dict[str, list[Pair]], overwrite: bool = False) -> Path:
    """Write ``split.csv`` (image, masks, split) atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "masks", "split"])
            for split, pairs in splits.items():
                for pair in pairs:
                    writer.writerow([str(pair.image), ";".join(map(str, pair.masks)), split])
    return atomic_write(path, write, overwrite=overwrite)
