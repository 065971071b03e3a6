"""Predicted labels written into an OME-Zarr image's own store, as NGFF label images (``labels/cells``,
``labels/parts``, multiscale), which napari's OME-Zarr reader, QuPath, Fiji (MoBIE) and OMERO show over the
image."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from ..io.calibration import PixelSize, ngff_image, ngff_level0
from ..io.files import DataError, is_zarr

__all__ = ["write_ngff_labels", "NGFF_LABELS"]

logger = logging.getLogger(__name__)

#: The label images written into a store, by name.
NGFF_LABELS = ("cells", "parts")
#: Resolution levels written (full, 1/2, 1/4, 1/8, 1/16), as ome-zarr writes images.
LEVELS = 5


def _format(store: Path):
    """ome-zarr's format of an existing store: NGFF 0.5 (zarr v3) or 0.4 (zarr v2)."""
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV05() if (store / "zarr.json").is_file() else FormatV04()


def write_ngff_labels(store: str | os.PathLike, labels: dict[str, np.ndarray], pixel_size: PixelSize | None = None,
                      overwrite: bool = False, chunk: int = 1024) -> dict[str, Path]:
    """Write label images into the ``labels`` group of an OME-Zarr image.

    Each label image is written whole into a temporary group beside the store, then moved into
    ``store/labels/<name>``, and only then listed in the ``labels`` group's metadata: an interrupted
    write leaves the store as it was.

    Parameters
    ----------
    store : path
        The OME-Zarr image (NGFF 0.4 or 0.5); its Y and X axes must be the labels' shape.
    labels : dict of str to np.ndarray
        Integer ``[H, W]`` label images by name (such as ``cells``, ``parts``).
    pixel_size : PixelSize, optional
        Written as the labels' scale with the unit micrometer (default: the image's own scale is not
        copied; the labels are then in pixels).
    overwrite : bool
        Replace label images of those names; otherwise their presence is a :class:`DataError`.
    chunk : int
        Chunk side of the written arrays.

    Returns
    -------
    dict of str to Path
        The folder of each label image.
    """
    import zarr
    from ome_zarr.writer import write_multiscale_labels

    store = Path(store)
    if not is_zarr(store):
        raise DataError(f"{store}: not an OME-Zarr store; labels are written into OME-Zarr images only")
    dataset, axes, _ = ngff_level0(store)
    shape = zarr.open_group(str(store), mode="r")[dataset].shape
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    for name, array in labels.items():
        if array.shape != (height, width):
            raise ValueError(f"labels {name!r} of shape {array.shape} for a {height}x{width} image")
    image = ngff_image(store)  # the store, or its series 0 in bioformats2raw's layout
    targets = {name: image / "labels" / name for name in labels}
    present = [p for p in targets.values() if p.exists()]
    if present and not overwrite:
        raise DataError(f"{present[0]}: labels of that name are already in the store; pass --overwrite to "
                        f"replace them")
    fmt = _format(store)
    version = 3 if fmt.version == "0.5" else 2  # zarr's, for NGFF 0.5 and 0.4
    temporary = store.parent / f".{store.name}.labels-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        group = zarr.open_group(str(temporary), mode="w", zarr_format=version)
        unit = {"unit": "micrometer"} if pixel_size else {}
        axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
        base = (pixel_size.y, pixel_size.x) if pixel_size else (1.0, 1.0)
        for name, array in labels.items():
            # nearest-neighbour levels as strided views: a label is never blended, and nothing is copied whole
            levels = [array[::2 ** k, ::2 ** k] for k in range(LEVELS) if min(array.shape) // 2 ** k >= 1]
            transforms = [[{"type": "scale", "scale": [base[0] * 2 ** k, base[1] * 2 ** k]}] for k in range(len(levels))]
            write_multiscale_labels(levels, group, name=name, fmt=fmt, axes=axes,
                                    coordinate_transformations=transforms,
                                    storage_options={"chunks": (chunk, chunk)})
        (image / "labels").mkdir(exist_ok=True)
        for name, target in targets.items():
            if target.exists():
                shutil.rmtree(target)
            os.replace(temporary / "labels" / name, target)
        listed = zarr.open_group(str(image / "labels"), mode="a", zarr_format=version)
        attrs = dict(listed.attrs)
        ome = attrs.get("ome", attrs) if version == 3 else attrs
        names = list(dict.fromkeys([*ome.get("labels", []), *labels]))
        if version == 3:
            listed.attrs["ome"] = {**attrs.get("ome", {}), "version": "0.5", "labels": names}
        else:
            listed.attrs["labels"] = names
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    logger.info("%s: labels %s written into the store", store, ", ".join(labels))
    return targets
