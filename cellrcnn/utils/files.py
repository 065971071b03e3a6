"""Writing files safely: atomic writes that never overwrite silently, and safe file names."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "safe_stem"]


def atomic_write(path: str | os.PathLike, write, overwrite: bool = False) -> Path:
    """Write a file through ``write(tmp_path)`` then rename it into place.

    A crash never leaves a half-written ``path``, and an existing file is only
    replaced with ``overwrite=True``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite to replace it")
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def safe_stem(name: str) -> str:
    """``name`` as a file stem: characters other than letters, digits, ``-`` and ``_`` become ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "image"
