"""The one error type for files a user gives: it names the file and says what to do.

It lives in the bottom layer so that every reader raises it, the config's as much as the image's;
:mod:`cellrcnn.io` re-exports it, where users find it (``cellrcnn.DataError``).
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A data file or folder that cannot be used; the message names it and what to do."""
