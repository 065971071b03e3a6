"""Training: the :class:`Trainer`, its loop, hooks that own their state, and runs.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".trainer": ("Trainer",),
    ".runs": ("fit", "sweep", "new_run_dir", "latest_run"),
    ".loop": ("validate", "lr_factor", "steps_per_epoch", "sizes_for_cell_size", "save_checkpoint", "epoch_seed"),
})
