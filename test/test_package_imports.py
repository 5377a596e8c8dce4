"""The package's import graph: no cycles, and the names module and ``rtseg --help`` load no torch.

The graph is read from the source with ``ast`` (nothing is imported), so every module is covered,
including the ROS layer on machines without rclpy. Each import is classed as

* module-level: runs when the importing module is imported (top level, class bodies, ``try``/``if``
  blocks; ``if TYPE_CHECKING:`` blocks excluded, they never run), or
* deferred: inside a function, run only when that function is called.

Importing a submodule also initialises its parent packages; those implicit edges are left out (every
package whose ``__init__`` imports its children would otherwise be a cycle), while an explicit
``from rtseg_ros.nets import build_model`` is an edge to ``rtseg_ros.nets``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "rtseg_ros"


@dataclass
class ImportGraph:
    """Edges between the package's modules, module-level and deferred kept apart."""

    modules: set[str]
    module_level: dict[str, set[str]] = field(default_factory=dict)
    deferred: dict[str, set[str]] = field(default_factory=dict)

    def combined(self) -> dict[str, set[str]]:
        return {m: self.module_level.get(m, set()) | self.deferred.get(m, set()) for m in self.modules}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement of ``tree`` with whether it is deferred (inside a function)."""

    def visit(node: ast.AST, deferred: bool) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                # Only the else branch runs.
                for statement in child.orelse:
                    yield from visit(ast.Module(body=[statement], type_ignores=[]), deferred)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, deferred
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from visit(child, inner)

    yield from visit(tree, False)


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package modules an import statement loads (parent packages left out, see the module doc)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in modules:
                found.add(alias.name)
        return found
    if node.level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source not in modules:
        return found
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        # "from package import submodule" loads the submodule; any other name comes from the package.
        found.add(submodule if submodule in modules else source)
    return found


def build_import_graph(root: Path = REPO, package: str = PACKAGE) -> ImportGraph:
    """Reads every ``*.py`` under ``root/package`` and returns the graph of imports among them."""
    files = sorted((root / package).rglob("*.py"))
    modules = {_module_name(path, root) for path in files}
    graph = ImportGraph(modules)
    for path in files:
        name = _module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, deferred in _imports(tree):
            targets = _targets(node, name, path.name == "__init__.py", modules) - {name}
            if targets:
                edges = graph.deferred if deferred else graph.module_level
                edges.setdefault(name, set()).update(targets)
    return graph


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path (``[a, b, ..., a]``) per strongly connected group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return [_cycle_in(group, edges) for group in groups]


def _cycle_in(group: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, within the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(edges.get(node, set()) & group):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group always has one


def _describe(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_import_graph()


# ------------------------------------------------------------------------------------------------
# The walker itself


def test_walker_reads_imports_and_finds_cycles(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.a import thing\n")
    (package / "a.py").write_text("from . import b\nthing = 1\n")
    (package / "b.py").write_text(textwrap.dedent("""\
        from typing import TYPE_CHECKING
        import pkg.sub.c
        if TYPE_CHECKING:
            from pkg import a
        def later():
            from .sub import c
            from pkg import a
    """))
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from ..a import thing\n")
    found = build_import_graph(tmp_path, "pkg")
    assert found.modules == {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    assert found.module_level == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"},
                                  "pkg.sub.c": {"pkg.a"}}
    assert found.deferred == {"pkg.b": {"pkg.sub.c", "pkg.a"}}
    assert find_cycles(found.module_level) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    assert find_cycles({"x": {"y"}, "y": set()}) == []


# ------------------------------------------------------------------------------------------------
# The package


def test_graph_covers_the_package(graph: ImportGraph) -> None:
    assert {"rtseg_ros.names", "rtseg_ros.nets.checkpoint", "rtseg_ros.engines.registry", "rtseg_ros.cli"} \
        <= graph.modules
    assert "rtseg_ros.nets.base" in graph.module_level["rtseg_ros.nets.mfaranet"]


def test_no_cycle_among_module_level_imports(graph: ImportGraph) -> None:
    cycles = find_cycles(graph.module_level)
    assert not cycles, f"modules that import each other at import time:\n{_describe(cycles)}"


def test_no_cycle_through_deferred_imports(graph: ImportGraph) -> None:
    # A function-level import that closes a loop hides a layering problem (the import only moved
    # into a function to dodge the circular import), e.g. encoder -> checkpoint -> builders -> encoder.
    cycles = find_cycles(graph.combined())
    assert not cycles, f"modules that import each other (deferred imports included):\n{_describe(cycles)}"


def test_names_module_imports_nothing_of_the_package(graph: ImportGraph) -> None:
    # The names table is the bottom layer: everything may read it, it reads nothing.
    assert not graph.module_level.get("rtseg_ros.names") and not graph.deferred.get("rtseg_ros.names")


# ------------------------------------------------------------------------------------------------
# What importing loads


def _loaded_after(code: str) -> set[str]:
    """The top-level module names in ``sys.modules`` after a fresh interpreter runs ``code``."""
    script = code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_names_module_loads_no_torch() -> None:
    loaded = _loaded_after("import rtseg_ros.names")
    assert "rtseg_ros" in loaded
    assert not {"torch", "rclpy", "numpy"} & loaded


def test_cli_help_loads_no_torch() -> None:
    code = textwrap.dedent("""\
        import contextlib, io
        from rtseg_ros.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main(["--help"], prog_name="rtseg")
            except SystemExit as exit:
                assert exit.code == 0, exit.code
        assert "Commands" in out.getvalue() and "info" in out.getvalue(), out.getvalue()
    """)
    loaded = _loaded_after(code)
    assert "click" in loaded
    assert not {"torch", "rclpy"} & loaded


def test_backend_registry_loads_no_torch() -> None:
    loaded = _loaded_after("from rtseg_ros.engines.registry import list_backends\nassert 'torch' in list_backends()")
    assert "torch" not in loaded


def test_engine_classes_load_no_optional_library() -> None:
    # Heavy or optional libraries load when an engine of that backend is built, never on import.
    code = textwrap.dedent("""\
        from rtseg_ros.engines.registry import get_backend_class, list_backends
        for name in list_backends():
            assert get_backend_class(name).name == name
    """)
    loaded = _loaded_after(code)
    assert "torch" in loaded
    assert not {"onnxruntime", "onnx", "onnxscript", "torch_tensorrt", "tensorrt", "modelopt", "openvino"} & loaded
