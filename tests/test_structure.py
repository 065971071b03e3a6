"""The package's shape: imports run one way, and the public API is what docs/api.md lists."""

import ast
import subprocess
import sys

import pytest

import cellrcnn
from conftest import REPO

PACKAGE = REPO / "cellrcnn"
#: Each chain runs one way: a module may import those before it, never those after it.
CHAINS = [
    ("config", "io", "augment", "targets", "data", "train"),
    ("compat", "losses", "roi_heads", "model", "train"),  # compat: the private torch/torchvision names, a leaf
    ("model", "predict", "export"),
    ("model", "zoo", "predict", "export", "share"),  # zoo: the packaged module and reading packages; share: writing
    ("tiles", "predict"),  # tiles are pure numpy: stitching knows nothing of models
    ("config", "targets", "selection", "zoo", "predict"),  # one rule for the cells kept, below every prediction path
    ("selection", "model"),  # the rule is pure numpy: it knows nothing of models
    ("metrics", "report"),
    ("model", "runtime", "train"),  # runtime: the device and torchrun's process group, for training and prediction
]


def imports_of(module: str) -> set[str]:
    """The package modules that ``module`` imports anywhere in its file (lazy imports included)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cellrcnn."):
            found.add(node.module.split(".")[1])
    return found


def reachable(module: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_no_import_runs_upward_even_through_other_modules():
    graph = {p.stem: imports_of(p.stem) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    upward = [f"{earlier} reaches {later}" for chain in CHAINS for i, earlier in enumerate(chain)
              for later in chain[i + 1:] if later in reachable(earlier, graph)]
    assert not upward, upward


def test_the_public_api_loads_lazily_and_every_name_resolves():
    code = "import sys, cellrcnn, cellrcnn.cli; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    for name in cellrcnn.__all__:
        assert getattr(cellrcnn, name) is not None, name
    assert {"collate", "project_parts_on_boxes", "read_state_dict"}.isdisjoint(cellrcnn.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        cellrcnn.nonexistent


def test_docs_api_names_every_public_name():
    text = (REPO / "docs" / "api.md").read_text()
    missing = [name for name in cellrcnn.__all__ if f"`{name}" not in text and f"{name}(" not in text
               and f"`{name}`" not in text]
    assert not missing, missing


def _floors(lines) -> dict[str, str]:
    from packaging.requirements import Requirement
    found = {}
    for line in lines:
        req = Requirement(line.strip())
        found[req.name.lower()] = req.specifier
    return found


def test_dependency_floors_agree_and_hold_for_the_installed_packages():
    import configparser
    from importlib.metadata import version

    from packaging.version import Version

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    install = _floors(line for line in cfg["options"]["install_requires"].splitlines() if line.strip())
    test = _floors(line for line in cfg["options.extras_require"]["test"].splitlines() if line.strip())
    env_lines = [line.strip()[2:] for line in (REPO / "environment.yml").read_text().splitlines()
                 if line.strip().startswith("- ") and any(c in line for c in "=<>")
                 and not line.strip().startswith("- python")]
    env = _floors(env_lines)
    assert set(env) >= set(install), set(install) - set(env)
    for name, spec in install.items():
        floor = Version(next(s.version for s in spec if s.operator == ">="))
        # environment.yml states the same floor, or pins a version above it (torch and torchvision)
        assert str(env[name]) == str(spec) or all(Version(s.version) >= floor for s in env[name]), name
    for name, spec in {**install, **test}.items():
        assert spec.contains(version(name), prereleases=True), f"installed {name} {version(name)} is not {spec}"


def test_private_torch_and_torchvision_names_are_used_only_through_compat():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("torch", "torchvision"):
                found += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in ("torch", "torchvision"):
                    found.append(f"{path.name}: ...{node.attr}")
    assert not found, found
