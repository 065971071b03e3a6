"""The data section: file patterns, part values, channels, targets and augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .fields import AUGMENTATIONS, ENCODINGS, MAX_PIXEL_UM, MAX_PIXELS, MIN_PIXEL_UM, PROJECTIONS, TARGETS, _check, _positive_int, _Section

__all__ = ["DataConfig"]


@dataclass(frozen=True)
class DataConfig(_Section):
    """How a folder of images and masks becomes training samples.

    Parameters
    ----------
    image_glob, mask_glob
        Patterns selecting image and mask files inside their folder. Both are
        needed when image and mask share a stem and differ only by extension
        (``"*.bmp"`` and ``"*.png"`` for the WBC data).
    mask_suffix
        Suffix of the part-label mask's stem (``cell_001_masks.tif``); a mask may
        also carry the image's stem unchanged in a separate folder or extension.
    encoding
        ``"parts"``: one part-label map. ``"cells+parts"``: an instance label image
        of whole cells (``<stem><cells_suffix>``) with the part map.
        ``"cells+nuclei"``: cell instances with nucleus instances
        (``<stem><nuclei_suffix>``); cytoplasm is cell minus nucleus.
        ``"coco"``: one COCO instance JSON for the folder's images, where cells may
        overlap (each keeps its whole mask) and parts are their own annotations. A
        folder holding exactly one COCO JSON is read this way whatever the encoding's
        default says.
        ``"geojson"``: a QuPath GeoJSON file per image (``<stem>.geojson`` beside it or
        in ``masks/``): cell objects with their nuclei, or annotations classified as
        cells and parts. A folder of images with such files and no masks is read this
        way under the default encoding too.
    coco_cell, coco_parts
        With COCO or GeoJSON annotations: the category (GeoJSON: classification) of whole
        cells, and those of the parts annotated on their own, parts 2, 3, ... in order
        (part 1, cytoplasm, is the rest of the cell). A part goes to the cell that holds
        it by the rule of :func:`cellrcnn.data.targets.tie_parts`. With several
        ``class_names``, a COCO category or GeoJSON classification named after a class
        is a whole cell of that class, and so is a COCO cell whose ``attributes.class``
        names one.
    cells_suffix, nuclei_suffix
        Stem suffixes of the instance images of the last two encodings.
    part_values
        Pixel value of each part in the part map, in the order of the parts.
    snap_values
        Map undeclared values to the nearest declared one instead of failing.
    classes_csv
        CSV of ``image ID, class label`` (labels 1..C) giving every cell of an
        image a class; without it every cell is class 1.
    class_names
        Name of each cell class, class 1 first.
    targets
        ``"whole-cell"``: every cell; ``"largest"``: only the largest cell not
        touching the border (the largest cell when all touch it).
    min_area
        Cells of fewer pixels are ignored.
    percentiles
        Low and high percentile mapped to 0 and 1 for 16-bit and float images.
    skip_unpaired
        Skip (with a warning) images without a mask instead of failing.
    val_fraction, val_dir, split_seed
        Validation split: a seeded random fraction of the images, or all images
        of a separate folder.
    augment
        ``"none"``, ``"light"`` (flips and 90-degree turns), ``"adapt"`` (those,
        stain and brightness jitter and scale jitter: the adaptation recipe's)
        or ``"strong"`` augmentation of training images.
    channels
        Input channels of multi-channel images, in the order the network gets
        them (0-based: ``1,0`` puts channel 1 first). One channel is repeated to
        the three network channels, two get a zero third. None: the image's own
        channels (grayscale repeated, RGB as is, two channels with a zero third).
        Saved with the model and applied at prediction.
    projection
        ``"none"``: a Z-stack or time series is refused. ``"max"``: it becomes
        its maximum projection over planes and frames.
    crop
        Train on random square crops of this many pixels a side (images no
        larger are used whole); targets are rebuilt per crop, a cell cut by the
        crop edge keeps its visible part when that has at least ``min_area``
        pixels. Validation then predicts tiled, as prediction does. None: whole images.
    max_pixels
        The most pixels (rows x columns x planes) of an image read whole into
        memory, checked from the file's header before anything is read, so that
        a damaged or hostile header cannot exhaust memory. A larger field stored
        as an uncompressed TIFF is read window by window and never meets it;
        raise it for a real large image in any other format.
    pixel_size
        Micrometres per pixel of every image, instead of what their files state
        (ImageJ TIFF, OME-TIFF, OME-Zarr and CZI state it:
        :func:`cellrcnn.io.calibration.pixel_size_of`). None: each file's own,
        and none for files that state none (PNG, BMP, JPEG, plain TIFF).
    """

    image_glob: str = "*"
    mask_glob: str = "*"
    mask_suffix: str = "_masks"
    encoding: str = "parts"
    cells_suffix: str = "_cells"
    nuclei_suffix: str = "_nuclei"
    coco_cell: str = "cell"
    coco_parts: tuple[str, ...] = ("nucleus",)
    part_values: tuple[int, ...] = (0, 1, 2)
    snap_values: bool = False
    classes_csv: str | None = None
    class_names: tuple[str, ...] = ("cell",)
    targets: str = "whole-cell"
    min_area: int = 20
    percentiles: tuple[float, float] = (1.0, 99.8)
    skip_unpaired: bool = False
    val_fraction: float = 0.2
    val_dir: str | None = None
    split_seed: int = 0
    augment: str = "none"
    channels: tuple[int, ...] | None = None
    projection: str = "none"
    crop: int | None = None
    max_pixels: int = MAX_PIXELS
    pixel_size: float | None = None

    def __post_init__(self) -> None:
        if self.channels is not None:
            _check(isinstance(self.channels, Sequence) and not isinstance(self.channels, str),
                   f"channels must be a sequence of channel indices, got {self.channels!r}")
            object.__setattr__(self, "channels", tuple(self.channels))
            _check(1 <= len(self.channels) <= 3 and len(set(self.channels)) == len(self.channels)
                   and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in self.channels),
                   f"channels must be one to three distinct channel indices counted from 0 (such as 1,0), "
                   f"got {self.channels}")
        _check(self.projection in PROJECTIONS,
               f"projection must be one of {', '.join(PROJECTIONS)}; got {self.projection!r}")
        if self.crop is not None:
            _check(isinstance(self.crop, int) and not isinstance(self.crop, bool) and self.crop >= 32,
                   f"crop must be a whole number of pixels, at least 32, got {self.crop!r}")
        _check(isinstance(self.max_pixels, int) and not isinstance(self.max_pixels, bool) and self.max_pixels >= 1,
               f"max_pixels must be a whole number of pixels, at least 1, got {self.max_pixels!r}")
        _check(self.pixel_size is None or (isinstance(self.pixel_size, (int, float)) and not isinstance(self.pixel_size, bool)
                                           and MIN_PIXEL_UM <= self.pixel_size <= MAX_PIXEL_UM),
               f"pixel_size must be micrometres per pixel, from {MIN_PIXEL_UM:g} to {MAX_PIXEL_UM:g}, or None; got "
               f"{self.pixel_size!r}")
        for name in ("part_values", "class_names", "percentiles", "coco_parts"):
            value = getattr(self, name)
            _check(isinstance(value, Sequence) and not isinstance(value, str),
                   f"{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("image_glob", "mask_glob"):
            _check(isinstance(getattr(self, name), str) and getattr(self, name),
                   f"{name} must be a non-empty pattern such as '*.tif'")
        _check(self.encoding in ENCODINGS, f"encoding must be one of {', '.join(ENCODINGS)}; got {self.encoding!r}")
        suffixes = [self.mask_suffix, self.cells_suffix, self.nuclei_suffix]
        _check(len(set(suffixes)) == 3 and all(suffixes),
               f"mask, cells and nuclei suffixes must be different and non-empty, got {suffixes}")
        values = self.part_values
        _check(len(values) >= 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values),
               f"part_values must be two or more non-negative integers (one per part), got {values}")
        _check(len(set(values)) == len(values), f"part_values must be distinct, got {values}")
        _check(len(self.class_names) >= 1 and len(set(self.class_names)) == len(self.class_names)
               and all(isinstance(n, str) and n for n in self.class_names),
               f"class_names must be distinct non-empty names, got {self.class_names}")
        _check(isinstance(self.coco_cell, str) and self.coco_cell and self.coco_cell not in self.coco_parts
               and all(isinstance(n, str) and n for n in self.coco_parts)
               and len(set(self.coco_parts)) == len(self.coco_parts),
               f"coco_cell and coco_parts must be distinct non-empty category names, got {self.coco_cell!r} and "
               f"{self.coco_parts}")
        _check(self.targets in TARGETS, f"targets must be one of {', '.join(TARGETS)}; got {self.targets!r}")
        _positive_int("min_area", self.min_area)
        lo_hi = self.percentiles
        _check(len(lo_hi) == 2 and all(isinstance(p, (int, float)) for p in lo_hi) and 0 <= lo_hi[0] < lo_hi[1] <= 100,
               f"percentiles must be two numbers 0 <= low < high <= 100, got {lo_hi}")
        _check(isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1,
               f"val_fraction must lie in [0, 1), got {self.val_fraction!r}")
        _check(isinstance(self.split_seed, int), f"split_seed must be an integer, got {self.split_seed!r}")
        _check(self.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}; got {self.augment!r}")
