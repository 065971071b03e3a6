"""Opening a model in napari: drop a run folder, best.pt or a package .zip and the Predict widget gets it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["get_reader", "model_file"]


def model_file(path: str | Path) -> Path | None:
    """The model a dropped path names: a cellrcnn checkpoint, a run folder's ``best.pt``, or a package; else None
    (another ``.pt``, such as a plain state dict, or a damaged zip, is not ours to open)."""
    from ..inference.package import is_package
    from ..io.files import DataError
    from ..modeling.checkpoint import load_checkpoint

    path = Path(path)
    if path.is_dir() and (path / "best.pt").is_file():
        path = path / "best.pt"
    if path.suffix == ".pt" and path.is_file():
        try:
            load_checkpoint(path)  # tensors only (weights_only): reading a stranger's file runs nothing
        except (ValueError, FileNotFoundError):
            return None
        return path
    try:
        return path if is_package(path) else None
    except DataError:
        return None


def get_reader(path: str | list):
    """npe2 reader hook: a callable for cellrcnn models, None for anything else."""
    if isinstance(path, list) or model_file(path) is None:
        return None
    return _open_model


def _open_model(path: str):
    """Dock the Predict widget with this model chosen; no layer is added."""
    import napari

    viewer = napari.current_viewer()
    if viewer is not None:
        _, widget = viewer.window.add_plugin_dock_widget("cellrcnn", "Predict cells")
        widget.model_path.value = model_file(path)
    return [(None,)]  # napari's "read, no layers"
