"""`make setup`: clones share the cached packages, never each other's code."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

SHARED_PTH = "zz_cellrcnn_shared_env.pth"


def shared_env() -> Path | None:
    """The cached environment this suite's .venv reads its packages from (VENV_CACHE/KEY), or None (an environment
    built inside the clone)."""
    pth = Path(sysconfig.get_path("purelib")) / SHARED_PTH
    if not pth.is_file():
        return None
    site = Path(pth.read_text().split("addsitedir('", 1)[1].split("')", 1)[0])
    return site.parents[2]  # CACHE/KEY/lib/pythonX.Y/site-packages


def clone(at: Path) -> Path:
    """What `make setup` needs of a clone: the Makefile, the package metadata and the package."""
    at.mkdir()
    for name in ("Makefile", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, at / name)
    shutil.copytree(REPO / "cellrcnn", at / "cellrcnn", ignore=shutil.ignore_patterns("__pycache__"))
    return at


def python_says(python: Path | str, code: str, cwd: Path) -> str:
    """What ``code`` prints, run by ``python`` away from any clone (the working folder comes first on sys.path)."""
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_two_clones_set_up_one_after_the_other_each_import_their_own_code(tmp_path):
    env = shared_env()
    if env is None:
        pytest.skip("this .venv was built inside the clone (VENV_CACHE=): no shared environment to check")
    clones = [clone(tmp_path / "first"), clone(tmp_path / "second")]
    for at in clones:
        done = subprocess.run(["make", "setup", f"VENV_CACHE={env.parent}", f"PYTHON={sys.executable}"], cwd=at,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    where = "import cellrcnn, torch; print(cellrcnn.__file__)"
    for at in clones:
        assert Path(python_says(at / ".venv" / "bin" / "python", where, tmp_path)) == at / "cellrcnn" / "__init__.py"
        assert (at / ".venv").is_dir() and not (at / ".venv").is_symlink()  # its own, not a link to the cache
        help_ = subprocess.run([str(at / ".venv" / "bin" / "cellrcnn-predict"), "--help"], capture_output=True,
                               text=True)
        assert help_.returncode == 0 and "usage: cellrcnn-predict" in help_.stdout
    # the shared environment holds no clone's code, and this suite still imports its own
    spec = "import importlib.util; print(importlib.util.find_spec('cellrcnn'))"
    assert python_says(env / "bin" / "python", spec, tmp_path) == "None"
    assert Path(python_says(sys.executable, where, tmp_path)) == REPO / "cellrcnn" / "__init__.py"
