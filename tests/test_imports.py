"""Imports inside ``brainseg`` go one way (no cycles), and ``import brainseg`` stays light (no gradio)."""
from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "brainseg"


def imported_modules(path: Path) -> set[str]:
    """The ``brainseg`` modules one file imports, anywhere in it (function bodies and TYPE_CHECKING too)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("brainseg")]
            found.update(name.split(".")[1] if "." in name else "__init__" for name in names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith("brainseg"):
                continue
            parts = (node.module or "").split(".")[1:] if node.level == 0 else (node.module or "").split(".")
            if parts and parts[0]:
                found.add(parts[0])
            else:  # from brainseg import x / from . import x
                found.update(alias.name if alias.name in modules else "__init__" for alias in node.names)
    found.discard(path.stem)
    return found


def import_graph() -> dict[str, set[str]]:
    return {path.stem: imported_modules(path) for path in sorted(PACKAGE.glob("*.py"))}


def test_the_graph_reads_real_imports() -> None:
    graph = import_graph()
    assert {"config", "hub", "inference"} <= graph["__init__"]
    assert "pixels" in graph["imaging"] and "model" in graph["inference"]


def test_brainseg_has_no_import_cycle() -> None:
    try:
        order = list(TopologicalSorter(import_graph()).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle inside brainseg: {' -> '.join(exc.args[1])}")
    assert order.index("config") < order.index("model") < order.index("inference") < order.index("__init__")


@pytest.mark.parametrize(("module", "forbidden"), [
    ("hub", {"inference", "model", "weights", "training"}),  # hub only finds files
    ("imaging", {"inference", "model", "training"}),
    ("pixels", {p.stem for p in PACKAGE.glob("*.py")}),
    ("model", {"hub", "inference", "weights", "training"}),
])
def test_layers_import_downwards_only(module: str, forbidden: set[str]) -> None:
    assert not imported_modules(PACKAGE / f"{module}.py") & forbidden


def test_pixels_needs_only_numpy() -> None:
    tree = ast.parse((PACKAGE / "pixels.py").read_text())
    nodes = list(ast.walk(tree))
    roots = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
    assert roots == {"__future__", "numpy"}


def test_import_brainseg_does_not_load_gradio() -> None:
    code = "import sys, brainseg; print(sorted(m for m in ('gradio', 'app') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
