"""No import circles in the project's packages: every import counts, function-local ones included
(they only delay a circle to the first call), as do those of package `__init__` modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [name for name in ("cbir", "cbir_ui") if (ROOT / name / "__init__.py").is_file()]


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in its text (`from a import b` imports a, and a.b
    when that is a module)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {module for module in found if module in modules and module != name}


def import_graph(root: Path, packages: list[str]) -> dict[str, set[str]]:
    paths = {module_name(path, root): path for package in packages for path in (root / package).rglob("*.py")}
    return {module: imported_modules(path, root, set(paths)) for module, path in paths.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return path[path.index(imported) :] + [imported]
            if imported not in state and (circle := visit(imported)):
                return circle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def test_the_project_has_no_import_circle():
    graph = import_graph(ROOT, PACKAGES)
    assert "cbir.trunks" in graph and graph["cbir.trunks"], "the graph should see the project's imports"
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


@pytest.mark.parametrize(
    "local_import", ["from cbir.trunks import Trunk", "import cbir.trunks", "from cbir import trunks", "from . import trunks"]
)
def test_a_function_local_import_closing_a_circle_is_found(tmp_path, local_import):
    package = tmp_path / "cbir"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "trunks.py").write_text("from cbir.recipe import Recipe\n")
    (package / "recipe.py").write_text(f"def later():\n    {local_import}\n")
    circle = find_circle(import_graph(tmp_path, ["cbir"]))
    assert circle is not None and set(circle) == {"cbir.recipe", "cbir.trunks"}
