"""Fuzzing every file reader (issue 37): many generated malformed inputs, and each either reads or raises a
DataError that names the file; never another exception.

Inputs are valid files of each kind, then damaged: bytes flipped, cut short or inserted (image files, masks,
package zips), or a value anywhere in the structure replaced by another JSON value (COCO, GeoJSON, config) or by
YAML text (``rdf.yaml``). The default profile (``ci``, in conftest.py) tries a few dozen per reader in a bounded
time, the same ones on every run; ``pytest tests/test_fuzz.py --hypothesis-profile=thorough --hypothesis-show-statistics`` tries
thousands with fresh seeds (docs/reliability.md has its figures).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from cellrcnn import Config, DataConfig
from cellrcnn.io.coco import read_coco
from cellrcnn.io.fields import open_field
from cellrcnn.io.files import DataError
from cellrcnn.io.geojson import read_geojson
from cellrcnn.io.intensity import read_image
from cellrcnn.io.masks import read_labels

rng = np.random.default_rng(0)
PIXELS = (rng.random((12, 16, 3)) * 255).astype(np.uint8)


def encoded(suffix: str, array: np.ndarray = PIXELS) -> bytes:
    """``array`` as a file of the kind ``suffix`` names."""
    buffer = io.BytesIO()
    if suffix == ".tif":
        tifffile.imwrite(buffer, array)
    elif suffix == ".ome.tif":
        tifffile.imwrite(buffer, array[None, ..., 0], ome=True, metadata={"axes": "ZYX"})
    elif suffix == ".zlib.tif":
        tifffile.imwrite(buffer, array, compression="zlib")
    else:
        from PIL import Image

        Image.fromarray(array).save(buffer, format={".png": "PNG", ".bmp": "BMP", ".jpg": "JPEG"}[suffix])
    return buffer.getvalue()


IMAGES = {suffix: encoded(suffix) for suffix in (".tif", ".ome.tif", ".zlib.tif", ".png", ".bmp", ".jpg")}
MASKS = {suffix: encoded(suffix, (PIXELS[..., 0] > 128).astype(np.uint8) * 2) for suffix in (".tif", ".png")}


@st.composite
def damaged(draw, originals: dict[str, bytes]) -> tuple[str, bytes]:
    """A file of ``originals`` with a few bytes flipped, then perhaps cut short or with bytes inserted."""
    suffix = draw(st.sampled_from(sorted(originals)))
    data = bytearray(originals[suffix])
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        data = data[:cut]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return suffix.replace(".zlib", "").replace(".ome", ""), bytes(data)


def reads_or_names_the_file(read, path: Path) -> None:
    """``read(path)`` succeeds or raises a DataError naming ``path``; any other exception fails the test."""
    try:
        read(path)
    except DataError as err:
        assert path.name in str(err), str(err)


def written(folder: Path, stem: str, case: tuple[str, bytes]) -> Path:
    """A :func:`damaged` case as the file ``<stem><suffix>`` in ``folder``."""
    suffix, data = case
    path = folder / f"{stem}{suffix}"
    path.write_bytes(data)
    return path


@given(damaged(IMAGES))
def test_image_readers(tmp_path, case):
    path = written(tmp_path, "image", case)
    reads_or_names_the_file(read_image, path)
    reads_or_names_the_file(lambda p: open_field(p).read(0, 1, 0, 1), path)


@given(damaged(MASKS))
def test_mask_reader(tmp_path, case):
    reads_or_names_the_file(read_labels, written(tmp_path, "mask", case))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4),
                           max_leaves=12)


@st.composite
def altered(draw, original) -> object:
    """``original`` (JSON data) with up to three values anywhere in it replaced, removed or added."""
    data = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        node, steps = data, draw(st.integers(0, 6))
        for _ in range(steps):  # walk down to a random container
            children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
            containers = [c for c in children if isinstance(c, (dict, list))]
            if not containers:
                break
            node = draw(st.sampled_from(containers))
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()):
                node[key] = draw(JSON_VALUES)
            else:
                del node[key]
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(JSON_VALUES)
        else:
            return draw(JSON_VALUES)  # a scalar at the top: anything
    return data


def square(x0, y0, side):
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]


COCO = {"images": [{"id": 1, "file_name": "a.tif", "height": 12, "width": 16}],
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "nucleus"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 10, 1, 10, 10, 1, 10]]},
                        {"id": 2, "image_id": 1, "category_id": 2,
                         "segmentation": {"size": [12, 16], "counts": "k02:00000000000a2"}}]}  # rows 3-4, x 2-8
GEOJSON = {"type": "FeatureCollection", "features": [
    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(1, 1, 9)]},
     "nucleusGeometry": {"type": "Polygon", "coordinates": [square(3, 3, 3)]},
     "properties": {"objectType": "cell", "classification": {"name": "cell"}}}]}


@given(altered(COCO))
def test_coco_reader(tmp_path, data):
    from cellrcnn.io.coco import coco_masks

    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    tifffile.imwrite(tmp_path / "a.tif", PIXELS)

    def read(p):
        coco = read_coco(p)
        for image_id in coco.images:
            coco_masks(coco, image_id, "cell", ("nucleus",))

    reads_or_names_the_file(read, path)


@given(altered(GEOJSON))
def test_geojson_reader(tmp_path, data):
    from cellrcnn.io.geojson import geojson_masks

    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(data))
    reads_or_names_the_file(lambda p: (read_geojson(p), geojson_masks(p, (12, 16), "cell", ("nucleus",))), path)


CONFIG = Config(data=DataConfig(part_values=(0, 128, 255))).to_dict()


@given(altered(CONFIG))
def test_config_reader(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    reads_or_names_the_file(Config.from_json, path)


RDF = """type: model
format_version: 0.5.4
name: cells
description: cells and their parts
authors: [{name: A. Person}]
cite: [{text: Mask R-CNN, doi: 10.1109/ICCV.2017.322}]
license: BSD-3-Clause
inputs: [{id: raw, axes: [{type: batch}, {type: channel, channel_names: [r, g, b]}, {id: y, type: space, size: 64},
  {id: x, type: space, size: 64}], test_tensor: {source: in.npy}}]
outputs: [{id: cells, axes: [{type: batch}, {id: y, type: space, size: 64}, {id: x, type: space, size: 64}],
  test_tensor: {source: out.npy}}]
weights: {pytorch_state_dict: {source: weights.pt, architecture: {callable: CellLabels, import_from: cellrcnn.zoo,
  kwargs: {config: {model: {backbone: resnet18_fpn, weights: none}}}}, pytorch_version: '2.14'}}
"""
YAML_TEXT = st.text(alphabet=st.sampled_from(list("abz019:-[]{},'\"!&*#|>? \n\t")), max_size=60)


@st.composite
def packages(draw) -> bytes:
    """A package zip: the description above with text inserted or cut, beside small members; perhaps then
    damaged as bytes."""
    text = RDF
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(YAML_TEXT) + text[at + draw(st.integers(0, 20)):]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("rdf.yaml", text)
        archive.writestr("weights.pt", draw(st.binary(max_size=64)))
    data = buffer.getvalue()
    return draw(damaged({".zip": data}))[1] if draw(st.booleans()) else data


@pytest.fixture(scope="module")
def bioimageio_spec():
    return pytest.importorskip("bioimageio.spec")


@settings(max_examples=max(20, settings.default.max_examples // 2))  # bioimageio.spec: ~0.1 s per description
@given(packages())
def test_package_reader(tmp_path, bioimageio_spec, data):
    from cellrcnn.inference.package import is_package, read_package

    path = tmp_path / "model.zip"
    path.write_bytes(data)
    reads_or_names_the_file(lambda p: is_package(p) and read_package(p), path)
