"""The import path that every cellrcnn bioimage.io package names for its module.

A package's ``rdf.yaml`` says ``import_from: cellrcnn.zoo``, ``callable: CellLabels``. This path stays
fixed so that packages written by any version load; the code lives in :mod:`cellrcnn.inference.package`.
"""

from .inference.package import CellLabels

__all__ = ["CellLabels"]
