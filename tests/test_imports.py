"""Imports inside ``brainseg`` go one way, down the stages of docs/architecture.md (no cycles), and
``import brainseg`` stays light (no gradio)."""
from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "brainseg"
# bottom to top: a part may import its own kind and anything on a lower line, never a higher one
LAYERS: list[set[str]] = [
    {"fileio", "cpu"},
    {"config", "registry"},
    {"io"},
    {"models"},
    {"inference"},
    {"evaluation"},
    {"training", "views", "publishing"},
    {"calibration", "cohort"},
    {"app"},
    {"cli", "__main__"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    """``brainseg/io/hub.py`` -> ``brainseg.io.hub``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The longest known module that ``name`` (a module or a name inside one) lies in."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(module: str) -> set[str]:
    """The ``brainseg`` modules one module imports, anywhere in it (function bodies and TYPE_CHECKING too)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(filter(None, (resolve(alias.name) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0], base]))
            for alias in node.names:
                target = resolve(f"{base}.{alias.name}") or resolve(base)
                if target:
                    found.add(target)
    found.discard(module)
    return {m for m in found if m.startswith("brainseg")}


def part_of(module: str) -> str:
    """The stage a module belongs to: its subpackage, or the base module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_has_a_layer() -> None:
    parts = {part_of(m) for m in MODULES} - {"__init__", "splits"}
    assert parts <= set(RANK), f"add to LAYERS (and docs/architecture.md): {sorted(parts - set(RANK))}"


def test_the_graph_reads_real_imports() -> None:
    assert "brainseg.io.pixels" in imported_modules("brainseg.io.slices")
    assert "brainseg.models.unet" in imported_modules("brainseg.inference.segmenter")
    assert "brainseg.inference.segmenter" in imported_modules("brainseg")


def test_brainseg_has_no_import_cycle() -> None:
    graph = {module: imported_modules(module) for module in MODULES}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle inside brainseg: {' -> '.join(exc.args[1])}")
    assert order.index("brainseg.config") < order.index("brainseg.models.unet") < order.index("brainseg")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part_of(m) in RANK))
def test_imports_go_down_the_stages_only(module: str) -> None:
    upward = {target for target in imported_modules(module)
              if part_of(target) in RANK and RANK[part_of(target)] > RANK[part_of(module)]}
    assert not upward, f"{module} ({part_of(module)}) imports a later stage: {sorted(upward)}"


def test_the_package_root_holds_only_base_modules() -> None:
    root = {path.stem for path in PACKAGE.glob("*.py")}
    assert root <= {"__init__", "__main__", "config", "cpu", "fileio", "registry"}


def test_pixels_needs_only_numpy() -> None:
    tree = ast.parse((PACKAGE / "io" / "pixels.py").read_text())
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
