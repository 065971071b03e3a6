"""Progress bars for people, and plain lines for log files.

In a terminal or a notebook, :func:`progress` is tqdm's bar. When stderr is a file or a
pipe (``make demo > demo.log 2>&1``, a cluster job's log), a bar's redraws would fill the
file with carriage returns and cursor codes; there each bar writes a plain line at most
every :data:`LOG_INTERVAL` seconds, and one when it ends, on stdout with the other
information, so that stderr holds only what went wrong.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from tqdm.auto import tqdm

__all__ = ["LOG_INTERVAL", "progress", "to_terminal"]

#: Seconds between two lines of one bar in a log file.
LOG_INTERVAL = 30.0

_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def to_terminal(stream=None) -> bool:
    """Whether ``stream`` (stderr) is watched by a person: a terminal, or a notebook's output."""
    stream = stream if stream is not None else sys.stderr
    if "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws a widget
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _Lines:
    """A file for tqdm that turns redraws into lines: no carriage returns, no cursor codes, no blank clears."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        for piece in _CONTROL.sub("", text).replace("\r", "\n").split("\n"):
            line = piece.strip()
            if line and line != self.last:
                self.stream.write(line + "\n")
                self.last = line

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, as plain lines on stdout every :data:`LOG_INTERVAL` seconds when stderr is no
    terminal."""
    if not kwargs.get("disable") and not to_terminal():
        kwargs = {**kwargs, "file": _Lines(sys.stdout), "mininterval": LOG_INTERVAL, "maxinterval": LOG_INTERVAL, "leave": True,
                  "position": 0, "dynamic_ncols": False, "ncols": 100, "ascii": True}
    return tqdm(iterable, **kwargs)
