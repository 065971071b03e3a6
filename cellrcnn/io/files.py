"""Reading image files: the formats read, the one error type, and raw pixels with their axes."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile

from ..config.fields import MAX_PIXELS
from ..utils.errors import DataError

__all__ = ["DataError", "IMAGE_EXTENSIONS", "image_stem", "is_zarr", "open_zarr_array", "MAX_MEMBER_BYTES", "check_package_sizes", "check_pixels", "zip_members", "read_raw", "read_raw_axes"]


#: File extensions read as images or masks (``.zarr``: an OME-Zarr folder; ``.czi``: Zeiss, with
#: ``cellrcnn[formats]``).
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg", ".czi", ".zarr")


def image_stem(path: str | os.PathLike) -> str:
    """The name of an image's results: its file name without the extension, nor ``.ome`` before it
    (``a.ome.tif`` and ``a.ome.zarr`` give ``a``)."""
    stem = Path(path).stem
    return stem[:-4] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def is_zarr(path: str | os.PathLike) -> bool:
    """A zarr group folder (v2 or v3): an OME-Zarr image, or one of its NGFF label images."""
    path = Path(path)
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zattrs").is_file()
                              or (path / ".zgroup").is_file())


def open_zarr_array(path: str | os.PathLike):
    """The full-resolution array of an OME-Zarr image (or NGFF label image), unread, and its axes in
    tifffile's letters (``CYX``, ``TCZYX``...).

    Raises
    ------
    DataError
        Not an OME-Zarr image, malformed metadata, a missing array, or zarr not installed.
    """
    from .calibration import ngff_level0

    path = Path(path)
    try:
        import zarr
    except ImportError:
        raise DataError(f"{path}: reading OME-Zarr needs zarr: pip install 'cellrcnn[formats]'") from None
    dataset, axes, _ = ngff_level0(path)
    try:
        array = zarr.open_array(str(path / dataset), mode="r")
    except Exception as err:  # zarr raises many types for a missing or damaged array
        raise DataError(f"{path}: its full-resolution array {dataset!r} cannot be opened ({type(err).__name__}: "
                        f"{err}); write the store again") from None
    if len(axes) != array.ndim:
        raise DataError(f"{path}: its metadata names {len(axes)} axes for an array of {array.ndim}; write the store "
                        f"again")
    return array, axes


def _read_czi(path: Path, max_pixels: int) -> tuple[np.ndarray, str]:
    """The pixels of a CZI's first scene, every channel (``CYX``, or ``YXS`` for one colour channel), RGB order."""
    try:
        from pylibCZIrw import czi
    except ImportError:
        raise DataError(f"{path}: reading CZI needs pylibCZIrw: pip install 'cellrcnn[formats]'") from None
    with czi.open_czi(str(path)) as doc:
        box = doc.total_bounding_box
        channels = range(*box.get("C", (0, 1)))
        height, width = box["Y"][1] - box["Y"][0], box["X"][1] - box["X"][0]
        check_pixels(path, (len(channels), height, width), "CYX", max_pixels)
        planes = []
        for c in channels:
            plane = doc.read(plane={"C": c, "Z": 0, "T": 0})
            if doc.get_channel_pixel_type(c).startswith("Bgr"):  # Zeiss stores colour as BGR
                plane = plane[..., ::-1]
            planes.append(plane)
    if len(planes) == 1:
        plane = planes[0]
        return (plane[..., 0], "YX") if plane.shape[-1] == 1 else (plane, "YXS")
    return np.stack([p[..., 0] if p.shape[-1] == 1 else p.mean(axis=-1).astype(p.dtype) for p in planes]), "CYX"


def _unreadable(path: Path, err: Exception) -> DataError:
    """The DataError for a file that no reader can decode."""
    if isinstance(err, FileNotFoundError):
        return DataError(f"{path}: file not found")
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "backend" in reason:  # imageio's way of saying that no reader recognises the content
        reason = "no image reader recognises its content"
    return DataError(f"{path}: cannot read the file ({reason}); it may be corrupt or truncated: "
                     f"export it again or remove it from the folder")


#: The most bytes one member of a model package may unpack to, checked from the zip's directory before anything
#: is read: 512 MiB, nearly three times the largest cellrcnn model's weights (resnet50_fpn_v2, about 180 MB).
MAX_MEMBER_BYTES = 512 * 2**20


def zip_members(path: str | os.PathLike) -> list[tuple[str, int]]:
    """The members of a zip and the bytes each unpacks to, from its directory alone (nothing is unpacked).

    Raises
    ------
    DataError
        A damaged zip, or one using a feature Python's zip reader lacks.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return [(info.filename, info.file_size) for info in archive.infolist()]
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as err:  # zip features it lacks
        raise DataError(f"{path}: a damaged zip file ({err}); download or export the package again") from None


def check_package_sizes(path: str | os.PathLike, max_bytes: int = MAX_MEMBER_BYTES) -> None:
    """Refuse a package (a zip, or an unpacked folder or its ``rdf.yaml``) holding a file larger than ``max_bytes``
    unpacked, from the zip's directory or the folder's listing, before any member is read.

    The directory may understate a member's size; Python's zip reader then stops at the stated size (and finds
    the checksum wrong), so no member unpacks past the limit either way.

    Raises
    ------
    DataError
        Naming the package, the member and its size.
    """
    import zipfile

    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        sizes = zip_members(path)
    else:
        folder = path if path.is_dir() else path.parent
        sizes = [(p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file()]
    for name, size in sizes:
        if size > max_bytes:
            raise DataError(f"{path}: its member {name} unpacks to {size / 2**20:,.0f} MiB, more than the "
                            f"{max_bytes / 2**20:,.0f} MiB any file of a cellrcnn package may hold; it is not a "
                            f"package cellrcnn wrote: get the model again from a source you trust")


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def _is_czi(path: Path) -> bool:
    return path.suffix.lower() == ".czi"


def _pixels_of(shape: tuple[int, ...], axes: str) -> int:
    """Rows x columns x planes x frames: every axis but channels and colour samples."""
    return int(np.prod([n for a, n in zip(axes, shape) if a not in "CS"], dtype=np.float64))


def check_pixels(path: str | os.PathLike, shape: tuple[int, ...], axes: str, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse, before anything is read, an image whose header claims more than ``max_pixels`` pixels.

    Raises
    ------
    DataError
        Naming the file, its size and the two ways on: ``data.max_pixels`` (``--max-pixels``) for a
        real large image, or an uncompressed TIFF, which is read window by window.
    """
    pixels = _pixels_of(shape, axes)
    if pixels > max_pixels:
        size = " x ".join(str(n) for a, n in zip(axes, shape) if a not in "CS")
        raise DataError(f"{path}: its header claims {size} pixels ({pixels / 1e6:,.0f} megapixels), more than the "
                        f"{max_pixels / 1e6:,.0f} read whole into memory; if the image is real, save it as an "
                        f"uncompressed TIFF (read window by window) or raise --max-pixels (data.max_pixels), "
                        f"else export it again")


def _pil_header(path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and axes of a PNG, BMP or JPEG from its header alone (no pixel is decoded)."""
    from PIL import Image

    with _no_pil_limit(), Image.open(path) as image:
        width, height = image.size
        bands = len(image.getbands())
    return ((height, width), "YX") if bands == 1 else ((height, width, bands), "YXS")


@contextmanager
def _no_pil_limit():
    """PIL's own decompression-bomb limit off while cellrcnn's (``max_pixels``), checked first, applies: it would
    otherwise warn on stderr below our limit and refuse images above its own that a user allowed."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_raw_axes(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Read an image file as stored, with the name of each axis.

    Axes use tifffile's letters: ``Y`` and ``X`` (rows, columns), ``C``
    (channels), ``S`` (colour samples), ``Z`` (planes), ``T`` (frames), ``Q``
    or ``I`` (unknown). A TIFF's axes are those of its first series (ImageJ
    hyperstack, OME-TIFF or tifffile metadata); other files are ``YX`` or ``YXS``.

    Returns
    -------
    array : np.ndarray
        The pixels, dtype and shape untouched.
    axes : str
        One letter per dimension of ``array``.

    Raises
    ------
    DataError
        The file is missing, unreadable or holds no pixels, or its header claims
        more than ``max_pixels`` pixels (see :func:`check_pixels`; nothing is
        read then).
    """
    path = Path(path)
    try:
        if is_zarr(path):
            source, axes = open_zarr_array(path)
            check_pixels(path, tuple(source.shape), axes, max_pixels)
            array = np.asarray(source[...])
        elif _is_czi(path):
            array, axes = _read_czi(path, max_pixels)
        elif _is_tiff(path):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                check_pixels(path, tuple(series.shape), series.axes, max_pixels)
                array, axes = series.asarray(), series.axes
        else:
            from skimage.io import (
                imread,  # slow to import; only needed for non-TIFF files
            )

            check_pixels(path, *_pil_header(path), max_pixels)
            with _no_pil_limit():
                array = np.asarray(imread(path))
            axes = {2: "YX", 3: "YXS"}.get(array.ndim, "Q" * array.ndim)
        if array.size == 0:
            raise ValueError("no image data in the file")
    except DataError:
        raise
    except Exception as err:  # readers raise many types for corrupt or truncated files
        raise _unreadable(path, err) from None
    return array, axes


def read_raw(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image or mask file as stored (dtype and shape untouched); DataError if unreadable."""
    return read_raw_axes(path, max_pixels)[0]
