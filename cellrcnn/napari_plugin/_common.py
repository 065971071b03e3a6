"""What both widgets do the same way: follow the viewer's layers, read a path box, report a problem."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from magicgui.widgets import Container, FileEdit, Label
from napari.utils.notifications import show_error

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


def fail(status: Label, message: str) -> None:
    """One line in the widget's status and a napari notification."""
    status.value = message
    show_error(message)
