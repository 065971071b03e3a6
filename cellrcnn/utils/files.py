"""Writing files safely: atomic writes that never overwrite silently, and safe file names."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .errors import DataError

__all__ = ["atomic_write", "safe_stem", "read_text_within", "MAX_ANNOTATION_BYTES", "MAX_SETTINGS_BYTES"]


def atomic_write(path: str | os.PathLike, write, overwrite: bool = False) -> Path:
    """Write a file through ``write(tmp_path)`` then rename it into place.

    A crash never leaves a half-written ``path``, and an existing file is only
    replaced with ``overwrite=True``. Each call writes its own temporary file (named
    for the process and a random token), so concurrent writers never share one; without
    ``overwrite``, the file is put in place by a hard link, which fails if another
    writer got there first, so even a race never replaces a file silently.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite to replace it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        write(tmp)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder where a file is to be written; move it away or write "
                                    f"elsewhere")
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} exists; pass overwrite to replace it") from None
            except OSError:  # a file system without hard links: the check above is all there is
                os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def safe_stem(name: str) -> str:
    """``name`` as a file stem: characters other than letters, digits, ``-`` and ``_`` become ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "image"


#: The most bytes an annotation file (COCO JSON, GeoJSON) may hold before it is parsed: parsed, JSON takes about ten
#: times its size in memory, so a larger file would swap rather than fail. 1 GiB holds the outlines of millions of
#: cells; a larger data set is split into several files.
MAX_ANNOTATION_BYTES = 2**30
#: The most bytes of a settings file (a config, a zarr store's attributes), which are a few kilobytes.
MAX_SETTINGS_BYTES = 16 * 2**20


def read_text_within(path: str | os.PathLike, max_bytes: int, advice: str) -> str:
    """The text of ``path``, after checking from its size on disk that it holds at most ``max_bytes``.

    Raises
    ------
    DataError
        The file is larger (naming it, its size and ``advice``: what to do).
    OSError, UnicodeDecodeError
        As :meth:`pathlib.Path.read_text`.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{path}: {size / 2**20:,.0f} MiB, more than the {max_bytes / 2**20:,.0f} MiB such a file may "
                        f"hold; {advice}")
    return path.read_text()
