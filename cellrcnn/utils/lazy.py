"""Lazy re-exports (PEP 562) for the subpackages' ``__init__`` files.

A package's names load their module on first use. Importing a light module, such as
the numpy-only rule of the cells kept or the metrics, then never pulls in torch through
its package's ``__init__``; and ``import cellrcnn.cli`` stays fast for ``--help``.
:class:`MovedModules` keeps the flat module paths of earlier versions importable.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
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


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import hook that keeps the module paths of earlier versions working.

    ``import cellrcnn.losses`` or ``from cellrcnn.predict import Predictor`` gives a
    small module whose names are looked up, on first use, in the modules that hold
    them now. Importing one says, once, where it lives now (a ``DeprecationWarning``).

    Parameters
    ----------
    package : str
        The top package (``"cellrcnn"``).
    moved : mapping of str to tuple of str
        Old module name, relative to ``package``, to the modules that now hold its names
        (relative to ``package`` too), searched in order.
    """

    def __init__(self, package: str, moved: Mapping[str, tuple[str, ...]]):
        self.package = package
        self.moved = dict(moved)

    def install(self) -> None:
        """Put the hook on ``sys.meta_path`` once, however often the package is reloaded."""
        sys.meta_path[:] = [f for f in sys.meta_path
                            if not (isinstance(f, MovedModules) and f.package == self.package)]
        sys.meta_path.append(self)

    def find_spec(self, fullname: str, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent != self.package or name not in self.moved:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a plain module, filled in by exec_module

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__.rpartition(".")[2]
        homes = [f"{self.package}.{home}" for home in self.moved[name]]
        # stacklevel 2 points at the user's import line: warnings skips importlib's own frames
        warnings.warn(f"{module.__name__} is now {' and '.join(homes)}; the old path still works",
                      DeprecationWarning, stacklevel=2)

        def __getattr__(attr: str) -> Any:
            if not attr.startswith("__"):
                for home in homes:
                    value = getattr(importlib.import_module(home), attr, _MISSING)
                    if value is not _MISSING:
                        setattr(module, attr, value)  # later lookups skip this function
                        return value
            raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r}")

        def __dir__() -> list[str]:
            return sorted({n for home in homes for n in dir(importlib.import_module(home))} | set(vars(module)))

        module.__getattr__ = __getattr__
        module.__dir__ = __dir__
        module.__all__ = [n for home in homes for n in getattr(importlib.import_module(home), "__all__", ())]


_MISSING = object()
