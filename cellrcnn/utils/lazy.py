"""Lazy re-exports (PEP 562) for the subpackages' ``__init__`` files.

A package's names load their module on first use. Importing a light module, such as
the numpy-only rule of the cells kept or the metrics, then never pulls in torch through
its package's ``__init__``; and ``import cellrcnn.cli`` stays fast for ``--help``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable, Mapping


def lazy_exports(package: str, table: Mapping[str, tuple[str, ...]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for a package whose names live in its modules.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    table : mapping of str to tuple of str
        Module, relative to the package (``".files"``, ``"..utils.files"``), to the names it defines.

    Returns
    -------
    (list of str, callable, callable)
        The package's ``__all__``, and its module-level ``__getattr__`` and ``__dir__``.
    """
    where = {name: module for module, names in table.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name], package), name)
        if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f".{name}", package)  # a module of the package, not yet imported
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(where)

    return list(where), __getattr__, __dir__
