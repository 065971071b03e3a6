"""The one error type for files a user gives: it names the file and says what to do.

It lives in the bottom layer so that every reader raises it, the config's as much as the image's;
:mod:`cellrcnn.io` re-exports it, where users find it (``cellrcnn.DataError``).
"""

from __future__ import annotations

__all__ = ["DataError", "StoppedTogether"]


class DataError(ValueError):
    """A data file or folder that cannot be used; the message names it and what to do."""


class StoppedTogether(RuntimeError):
    """This process of a ``torchrun`` group stopped because another one failed (that one's own message says why)."""

    def __init__(self, rank: int, world_size: int, what: str) -> None:
        super().__init__(f"stopped because process {rank + 1} of {world_size} failed (its message says why); {what}")
        self.rank = rank
