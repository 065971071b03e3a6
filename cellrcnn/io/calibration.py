"""The pixel size of an image, read from its file's metadata: ImageJ TIFF, OME-TIFF, OME-Zarr (NGFF) and CZI.

A microscope writes how many micrometres a pixel spans into its files; a model applied at a stated physical
resolution (as QuPath's StarDist extension applies one) reads it here. Resolution tags of a plain TIFF are not
read: without ImageJ's or OME's metadata they almost always hold a screen's 72 or 96 dpi, not a microscope's
pixel.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..config.fields import MAX_PIXEL_UM, MIN_PIXEL_UM
from ..utils.errors import DataError
from ..utils.files import MAX_SETTINGS_BYTES, read_text_within

__all__ = ["PixelSize", "pixel_size_of", "training_pixel_size", "ngff_image", "ngff_level0", "checked_pixel_size", "UNIT_UM", "MIN_PIXEL_UM", "MAX_PIXEL_UM",
           "is_ome_zarr"]

logger = logging.getLogger(__name__)

#: Micrometres per unit, for the unit names files use (ImageJ, OME, NGFF, TIFF).
UNIT_UM = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "Å": 1e-4, "angstrom": 1e-4,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6, "inch": 25400.0, "in": 25400.0,
}

#: Two readings of one file (its OME and ImageJ metadata, say) that differ by more than this fraction
#: contradict each other.
AGREE = 0.01


@dataclass(frozen=True)
class PixelSize:
    """How many micrometres one pixel spans, along Y (rows) and X (columns).

    Attributes
    ----------
    y, x : float
        Micrometres per pixel.
    source : str
        Where it came from: ``"ImageJ"``, ``"OME"``, ``"NGFF"``, ``"CZI"``, or ``"given"`` (``--pixel-size``).
    unit : str
        Always ``"µm"``: every file's unit is converted.
    """

    y: float
    x: float
    source: str = "given"
    unit: str = "µm"

    @property
    def side(self) -> float:
        """The side of a square pixel of the same area (µm): the one figure scaling and lengths use."""
        return math.sqrt(self.y * self.x)

    @property
    def area(self) -> float:
        """The area of one pixel in µm²."""
        return self.y * self.x

    @classmethod
    def of(cls, value: PixelSize | float) -> PixelSize:
        """``value`` as a PixelSize: one as it is, a number (µm) as a square pixel of that side."""
        return value if isinstance(value, PixelSize) else cls(float(value), float(value))

    def __str__(self) -> str:
        size = f"{self.x:.4g}" if math.isclose(self.y, self.x, rel_tol=AGREE) else f"{self.y:.4g} x {self.x:.4g}"
        return f"{size} µm per pixel ({self.source})"


def _um(value, unit: str | None) -> float | None:
    """``value`` in micrometres, or None when the unit is none a length has (pixels, or unknown); no unit: µm."""
    name = unit.strip().replace("\\u00B5", "µ") if unit else "µm"  # ImageJ writes µ escaped
    factor = UNIT_UM.get(name.lower(), UNIT_UM.get(name))
    try:
        return None if factor is None else float(value) * factor
    except (TypeError, ValueError):
        return math.nan  # a value that is no number is refused by checked_pixel_size


def checked_pixel_size(y, x, source: str, where: str | os.PathLike) -> PixelSize:
    """A :class:`PixelSize` from two values in micrometres, refused when either is not a finite number in
    [:data:`MIN_PIXEL_UM`, :data:`MAX_PIXEL_UM`].

    Raises
    ------
    DataError
        One line naming ``where`` (the file, or the flag) and the value.
    """
    for axis, value in (("Y", y), ("X", x)):
        try:
            ok = math.isfinite(float(value)) and MIN_PIXEL_UM <= float(value) <= MAX_PIXEL_UM
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{where}: its pixel size along {axis} ({source}) is {value!r} µm, not a size a "
                            f"microscope's pixel has ({MIN_PIXEL_UM:g} to {MAX_PIXEL_UM:g} µm); correct the file's "
                            f"calibration or give the size with --pixel-size")
    return PixelSize(float(y), float(x), source)


def _resolution_sides(tags) -> tuple[float, float]:
    """Units per pixel along Y and X from a TIFF page's resolution tags (pixels per unit, as rationals); Y is
    X's when the file gives none of its own."""
    x = tags["XResolution"].value
    y = tags["YResolution"].value if "YResolution" in tags else x
    return tuple(math.inf if r[0] == 0 else r[1] / r[0] for r in (y, x))


def _tiff_readings(path: Path) -> list[tuple[str, float | None, float | None]]:
    """(source, y, x) in µm from a TIFF's OME and ImageJ metadata (None for an axis a source leaves out)."""
    import tifffile

    readings = []
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        if tif.is_ome and tif.ome_metadata:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(tif.ome_metadata)
            pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
            if pixels is not None and ("PhysicalSizeX" in pixels.attrib or "PhysicalSizeY" in pixels.attrib):
                readings.append(("OME",
                                 _um(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit", "µm"))
                                 if "PhysicalSizeY" in pixels.attrib else None,
                                 _um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm"))
                                 if "PhysicalSizeX" in pixels.attrib else None))
            unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
            if readings and unit == 3 and "XResolution" in tags:  # centimetres, as Bio-Formats writes beside OME
                y, x = (side * 1e4 for side in _resolution_sides(tags))
                readings.append(("TIFF resolution tags", y, x))
        if tif.is_imagej and tif.imagej_metadata is not None:
            unit = tif.imagej_metadata.get("unit")
            if unit and "XResolution" in tags:
                y, x = (_um(side, unit) for side in _resolution_sides(tags))
                if x is not None:
                    readings.append(("ImageJ", y, x))
    return readings


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """A folder (``*.zarr``, or any folder) holding an OME-Zarr image: NGFF multiscales in its attributes, or
    in its series ``0`` (the layout bioformats2raw writes, as QuPath and Bio-Formats export)."""
    path = Path(path)
    return path.is_dir() and _ngff_attributes(ngff_image(path)) is not None


def ngff_image(path: str | os.PathLike) -> Path:
    """The image group of an OME-Zarr store: the store itself, or its first series ``0`` in bioformats2raw's
    layout (``"bioformats2raw.layout"`` in the store's attributes). Its labels go in ``<image group>/labels``."""
    path = Path(path)
    if _ngff_attributes(path) is None and "bioformats2raw.layout" in _group_attributes(path) and \
            _ngff_attributes(path / "0") is not None:
        return path / "0"
    return path


def _group_attributes(path: Path) -> dict:
    """The attributes of a zarr group folder (v3's ``zarr.json`` ``attributes``, or v2's ``.zattrs``), ``ome``
    unwrapped; {} for a folder without."""
    for name in ("zarr.json", ".zattrs"):
        file = path / name
        if file.is_file():
            try:
                attrs = json.loads(read_text_within(file, MAX_SETTINGS_BYTES, "write the store again"))
            except DataError:
                raise
            except (OSError, ValueError, UnicodeDecodeError) as err:
                raise DataError(f"{file}: not a readable zarr attributes file ({err}); write the store again") from None
            if name == "zarr.json":
                attrs = attrs.get("attributes", {}) if isinstance(attrs, dict) else {}
            if not isinstance(attrs, dict):
                return {}
            return {**attrs, **attrs["ome"]} if isinstance(attrs.get("ome"), dict) else attrs
    return {}


def _ngff_attributes(path: Path) -> dict | None:
    """The NGFF attributes of an image group folder, or None when it has no multiscales."""
    attrs = _group_attributes(path)
    return attrs if isinstance(attrs.get("multiscales"), list) and attrs["multiscales"] else None


def ngff_level0(path: Path) -> tuple[str, str, list[float]]:
    """The first multiscale's full-resolution dataset of an OME-Zarr image: (its path within ``path``, its axes
    as tifffile's letters, its scale per axis: the dataset's transformations times the multiscale's own).

    Raises
    ------
    DataError
        Metadata missing or malformed, naming the store.
    """
    image = ngff_image(path)
    attrs = _ngff_attributes(image)
    if attrs is None:
        raise DataError(f"{path}: not an OME-Zarr image (no NGFF multiscales in its attributes); write it with "
                        f"ome-zarr or bioformats2raw")
    try:
        multiscale = attrs["multiscales"][0]
        axes = multiscale.get("axes") or [{"name": n} for n in "tczyx"]  # NGFF before 0.4: always 5-D
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
        dataset = multiscale["datasets"][0]
        scale = [1.0] * len(names)
        for transforms in (dataset.get("coordinateTransformations", []),
                           multiscale.get("coordinateTransformations", [])):
            for t in transforms:
                if t.get("type") == "scale":
                    scale = [a * float(b) for a, b in zip(scale, t["scale"])]
        letters = "".join({"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(n.lower(), "Q") for n in names)
        return (image / str(dataset["path"])).relative_to(path).as_posix(), letters, scale
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: malformed NGFF multiscales metadata ({type(err).__name__}: {err}); write the "
                        f"store again with ome-zarr") from None


def _ngff_readings(path: Path) -> list[tuple[str, float | None, float | None]]:
    attrs = _ngff_attributes(ngff_image(path))
    if attrs is None:
        return []
    _, letters, scale = ngff_level0(path)
    axes = attrs["multiscales"][0].get("axes") or []
    units = {letters[i]: (a.get("unit") if isinstance(a, dict) else None) for i, a in enumerate(axes)}
    if "Y" not in letters or "X" not in letters or not (units.get("Y") or units.get("X")):
        return []  # no unit: the scale is in pixels, not a physical size
    return [("NGFF", _um(scale[letters.index("Y")], units.get("Y") or units.get("X")),
             _um(scale[letters.index("X")], units.get("X") or units.get("Y")))]


def _czi_readings(path: Path) -> list[tuple[str, float | None, float | None]]:
    from pylibCZIrw import czi

    with czi.open_czi(str(path)) as doc:
        metadata = doc.metadata
    try:
        items = metadata["ImageDocument"]["Metadata"]["Scaling"]["Items"]["Distance"]
    except (KeyError, TypeError):
        return []
    items = items if isinstance(items, list) else [items]
    by_axis = {item.get("@Id"): item.get("Value") for item in items if isinstance(item, dict)}
    if "X" not in by_axis:
        return []
    x = float(by_axis["X"]) * 1e6  # CZI stores metres
    y = float(by_axis.get("Y") or by_axis["X"]) * 1e6
    return [("CZI", y if y > 0 else x, x)]


def pixel_size_of(path: str | os.PathLike) -> PixelSize | None:
    """The pixel size a file's metadata states, or None when it states none.

    Read from OME-TIFF (``PhysicalSizeY/X`` and their units), ImageJ TIFF
    (resolution tags with ImageJ's ``unit``), OME-Zarr (the full-resolution
    dataset's scale with the axes' units) and CZI (``Scaling/Distance``).
    PNG, BMP, JPEG and plain TIFF state none.

    Raises
    ------
    DataError
        One line naming the file: a stated size that is zero, negative, not a
        number or absurd (:func:`checked_pixel_size`), or two statements in one
        file (OME and ImageJ) that differ by more than 1 %.
    """
    path = Path(path)
    suffix = path.suffix.lower()  # io.files reads this module: its own suffix checks would make a cycle
    try:
        if suffix in (".tif", ".tiff"):
            readings = _tiff_readings(path)
        elif path.is_dir():
            readings = _ngff_readings(path)
        elif suffix == ".czi":
            readings = _czi_readings(path)
        else:
            return None
    except DataError:
        raise
    except ImportError as err:
        raise DataError(f"{path}: reading it needs {err.name}: pip install 'cellrcnn[formats]'") from None
    except Exception as err:  # a damaged file: the image reader will say so; a calibration it cannot give is none
        logger.debug("%s: no pixel size read (%s)", path, err)
        return None
    sizes = [checked_pixel_size(y if y is not None else x, x if x is not None else y, source, path)
             for source, y, x in readings if not (y is None and x is None)]
    for other in sizes[1:]:
        if not (math.isclose(other.y, sizes[0].y, rel_tol=AGREE) and math.isclose(other.x, sizes[0].x, rel_tol=AGREE)):
            raise DataError(f"{path}: its metadata contradicts itself: {sizes[0]} against {other}; give the true "
                            f"size with --pixel-size or correct the file")
    return sizes[0] if sizes else None


def training_pixel_size(paths: list[Path], given: float | None = None, say: bool = True) -> float | None:
    """The pixel size (µm) a model trained on the images ``paths`` records: ``given`` (``data.pixel_size``),
    else the median of what their files state; None when none states one.

    With ``say``, logs the size, and warns when only some images state one (the others are taken to share
    it) or when they span more than 5 %.
    """
    if given is not None:
        return float(checked_pixel_size(given, given, "given", "data.pixel_size").side)
    sizes = [pixel_size_of(path) for path in paths]
    known = [s.side for s in sizes if s is not None]
    if not known:
        return None
    median = float(statistics.median(known))
    if say:
        logger.info("training images: %s µm per pixel (median of %d calibrated images)", f"{median:.4g}", len(known))
        if len(known) < len(sizes):
            logger.warning("%d of %d training images state no pixel size; they are taken to have the others' "
                           "(%s µm): give --pixel-size if they do not", len(sizes) - len(known), len(sizes),
                           f"{median:.4g}")
        if max(known) > 1.05 * min(known):
            logger.warning("training images have pixel sizes from %s to %s µm; the model records their median, %s µm",
                           f"{min(known):.4g}", f"{max(known):.4g}", f"{median:.4g}")
    return median
