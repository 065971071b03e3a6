"""The three notebooks run top to bottom on the bundled sample, in a scratch copy of the project layout."""

import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

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
    assert len(exports) == 12 and list((root / "runs" / "notebooks" / "predictions").glob("*/cells.csv"))
    assert "cytoplasm_weight" in _text(books["02_finetune.ipynb"])
