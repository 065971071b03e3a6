"""What both widgets do the same way: follow the viewer's layers, read a path box, report a problem."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from magicgui.widgets import Container, FileEdit, Label
from napari.utils.notifications import show_error

from ..config.tree import rename_settings

__all__ = ["follow_layers", "given", "fail"]


def follow_layers(widget: Container, viewer, refresh: Callable, on_close: Callable[[], None]) -> None:
    """Call ``refresh`` when layers are added or removed; when the dock closes, disconnect it (no handler left on
    the viewer) and call ``on_close`` (stop the work; it must not touch the widget, which may be gone)."""
    events = (viewer.layers.events.inserted, viewer.layers.events.removed)
    for event in events:
        event.connect(refresh)
    widget.native.destroyed.connect(lambda: [event.disconnect(refresh) for event in events])
    widget.native.destroyed.connect(on_close)


def given(edit: FileEdit) -> Path | None:
    """The path in a file box, or None when it is empty."""
    return Path(edit.value) if str(edit.value) not in ("", ".") else None


def fail(status: Label, message: str, labels: Mapping[str, str] | None = None) -> None:
    """One line in the widget's status and a napari notification, the settings it names in the widget's terms.

    ``labels`` maps settings (``score_threshold``, ``train.steps``) to the widget's own labels; a setting the
    widget does not show stays as the library names it (``data.snap_values``: a config field).
    """
    if labels:
        message = rename_settings(message, lambda name, value: None if name not in labels else
                                  f"'{labels[name]}'" + (f" {value}" if value not in (None, "True") else ""))
    status.value = message
    show_error(message)
