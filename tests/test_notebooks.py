"""The three notebooks run top to bottom on the bundled sample, in a scratch copy of the project layout."""

import json
import shutil

import nbformat
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import REPO
from nbclient import NotebookClient

NOTEBOOKS = ["01_look_at_your_data.ipynb", "02_finetune.ipynb", "03_predict_and_export.ipynb"]


def test_committed_notebooks_carry_no_outputs():
    for name in NOTEBOOKS:
        book = nbformat.read(REPO / "notebooks" / name, as_version=4)
        assert all(not c.get("outputs") and not c.get("execution_count") for c in book.cells if c.cell_type == "code")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "data" / "sample", root / "data" / "sample")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    books = {}
    for name in NOTEBOOKS:  # in order: notebook 3 uses the run of notebook 2
        book = nbformat.read(root / "notebooks" / name, as_version=4)
        NotebookClient(book, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(root / "notebooks")}}).execute()
        books[name] = book
    return root, books


def _text(book):
    return "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _draws(cell) -> bool:
    """A code cell that shows a figure: it calls a plotting function of cellrcnn.plots."""
    return cell.cell_type == "code" and "plots." in cell.source


def _has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def test_every_cell_that_draws_shows_its_figure_even_after_training(executed):
    _, books = executed
    drawing = {(name, i): _has_image(c) for name, book in books.items() for i, c in enumerate(book.cells) if _draws(c)}
    assert len(drawing) == 7  # 2 in notebook 1, the live plot and the sweep in 2, 3 in notebook 3
    assert all(drawing.values()), [cell for cell, shown in drawing.items() if not shown]
    # the sweep's figure comes after fit() and the sweep's own training: fit must not switch the backend
    finetune = books["02_finetune.ipynb"].cells
    sweep_plot = max(i for i, c in enumerate(finetune) if _draws(c))
    assert any("cellrcnn.fit(" in c.source for c in finetune[:sweep_plot]) and _has_image(finetune[sweep_plot])


def test_data_notebook_finds_no_problems_and_draws(executed):
    _, books = executed
    book = books["01_look_at_your_data.ipynb"]
    assert "[]" in _text(book)  # the list of problems is empty
    images = [o for c in book.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2


def test_finetune_and_predict_notebooks_leave_runs_and_exports(executed):
    root, books = executed
    runs = sorted((root / "runs" / "notebooks").glob("*/best.pt"))
    assert runs, "notebook 2 leaves a run with best.pt"
    sweeps = list((root / "runs" / "notebooks").glob("*/cytoplasm_weight_*/best.pt"))
    assert len(sweeps) == 2
    exports = list((root / "runs" / "notebooks" / "predictions").glob("*/*_cells.tif"))
    assert len(exports) == 13 and list((root / "runs" / "notebooks" / "predictions").glob("*/cells.csv"))
    # the overlapping-cells section: QuPath GeoJSON per image and one COCO file, each cell with its whole mask
    crops = exports[0].parent
    assert len(list(crops.glob("*.geojson"))) == 12 and (crops / "cells.json").is_file()
    coco = json.loads((crops / "cells.json").read_text())
    assert len(coco["images"]) == 12 and sum(a["category_id"] == 1 for a in coco["annotations"]) == \
        len(pd.read_csv(crops / "cells.csv"))
    # the whole field of view: a 2048 x 2048 two-channel 16-bit TIFF, its labels written with the pixel size
    field = next(p for p in exports if p.name == "field_cells.tif")
    with tifffile.TiffFile(root / "runs" / "notebooks" / "synthetic_field" / "field.tif") as source:
        assert source.series[0].shape == (2, 2048, 2048) and source.series[0].dtype == np.uint16
    with tifffile.TiffFile(field) as tif:
        page = tif.pages[0]
        assert page.shape == (2048, 2048) and tif.imagej_metadata["unit"] == "micron"
        numerator, denominator = page.tags["XResolution"].value
        assert numerator / denominator == pytest.approx(1 / 0.325)
    assert (field.parent / "field_cells.csv").exists() and (field.parent / "field_parts.tif").exists()
    sweep_cell = next(c for c in books["02_finetune.ipynb"].cells if "cellrcnn.sweep(" in c.source)
    table = "".join(str(o.get("data", {}).get("text/plain", "")) for o in sweep_cell.outputs)
    assert all(word in table for word in ("part", "weight", "cytoplasm_dice", "best_epoch")), table
