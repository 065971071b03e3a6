"""The package's shape: imports run one way, and the public API is what docs/api.md lists."""

import ast
import subprocess
import sys

import pytest
from conftest import REPO

import cellrcnn

PACKAGE = REPO / "cellrcnn"
#: The layers, lowest first: a module may import its own layer and those below, never one above.
LAYERS = ("utils", "config", "viz", "io", "data", "sample_data", "modeling", "inference", "evaluation", "engine",
          "export", "cli", "napari_plugin")
#: Modules that stay pure inside their layer: they import none of these (lazily neither).
PURE = {
    "cellrcnn.inference.tiles": ("cellrcnn.modeling", "cellrcnn.inference.predictor"),  # stitching knows no model
    "cellrcnn.inference.selection": ("cellrcnn.modeling",),  # the rule of the cells kept is numpy
    "cellrcnn.inference.tta": ("cellrcnn.",),  # views and their merge are numpy
    "cellrcnn.evaluation.metrics": ("cellrcnn.",),  # metrics are pure functions
    "cellrcnn.data.targets": ("cellrcnn.",),
    "cellrcnn.modeling.losses": ("cellrcnn.",),
}


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path) -> set[str]:
    """The cellrcnn modules that a file imports anywhere in it (lazy imports included), as dotted names."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - node.level + 1]
            found |= ({".".join(base + [node.module])} if node.module
                      else {".".join(base + [a.name]) for a in node.names})
        elif (node.module or "").startswith("cellrcnn."):
            found.add(node.module)
    return found


GRAPH = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_every_subpackage_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS), folders ^ set(LAYERS)


def test_imports_run_down_the_layers_only():
    upward = [f"{module} imports {target}" for module, targets in GRAPH.items() for target in targets
              if layer(module) and layer(target) and LAYERS.index(layer(target)) > LAYERS.index(layer(module))]
    assert not upward, upward


def test_no_module_reaches_itself_through_others():
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for dep in GRAPH.get(todo.pop(), ()):
                if dep not in seen and dep not in packages:
                    seen.add(dep)
                    todo.append(dep)
        return seen
    # package __init__ files only re-export; a cycle among the modules themselves is a design error
    modules = [m for m in GRAPH if m not in packages]
    cycles = [m for m in modules if m in reach(m)]
    assert not cycles, cycles


def test_pure_modules_stay_pure_and_nothing_in_the_library_uses_the_sample_data():
    impure = [f"{module} imports {t}" for module, banned in PURE.items() for t in GRAPH[module]
              if t.startswith(banned)]
    assert not impure, impure
    users = [m for m, targets in GRAPH.items() if not m.startswith(("cellrcnn.sample_data", "cellrcnn.cli"))
             and m != "cellrcnn" and any(t.startswith("cellrcnn.sample_data") for t in targets)]
    assert not users, users


def test_modules_stay_short():
    """About 400 lines at most; the exceptions say why."""
    reasons = {  # one class each, whose methods share its state; cut in two it would be harder to follow
        "cellrcnn.inference.predictor": "the Predictor: one generator (_steps) and the thin ways into it",
        "cellrcnn.engine.trainer": "the Trainer: build_* methods and the epoch loop over its state, as detectron2's",
    }
    long = [f"{p.relative_to(REPO)}: {n}" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 430 and module_name(p) not in reasons]
    assert not long, long


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
