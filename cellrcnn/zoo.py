"""The import path that every cellrcnn bioimage.io package names for its module.

A package's ``rdf.yaml`` says ``import_from: cellrcnn.zoo``, ``callable: CellLabels``. This path stays
fixed so that packages written by any version load; the code lives in :mod:`cellrcnn.inference.package`.
The other names are those this module had before the move to layers.
"""

from .inference.package import PACKAGE_SUFFIXES, CellLabels, Package, is_package, read_package

__all__ = ["CellLabels", "Package", "is_package", "read_package", "PACKAGE_SUFFIXES"]
