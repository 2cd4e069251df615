"""The floors hold: the methods stand on benchmark.core only, core imports nothing above it, getting data
(benchmark.sources) sits beside the methods and never under them, the product never imports the studies, no
import cycles."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("benchmark", "attacks", "defenses")
PACKAGES = (*PRODUCT, "studies")
ABOVE_SOURCES = ("benchmark.weights", "benchmark.run", "benchmark.report", "attacks", "defenses", "studies")
ABOVE_CORE = ("benchmark.sources", *ABOVE_SOURCES)


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every project module and the project modules it imports (lazy and type-only imports included)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.Import):
                    found |= {a.name for a in node.names}
            graph[_module(path)] = {m for m in found if m.split(".")[0] in PACKAGES}
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def _within(*floors: str) -> Callable[[str], bool]:
    """A module test: the module is one of `floors` or sits inside one of them."""
    return lambda m: any(m == f or m.startswith(f + ".") for f in floors)


def _edges(importer: Callable[[str], bool], imported: Callable[[str], bool]) -> list[tuple[str, str]]:
    """Every (module, dependency) pair where `importer` holds for the module and `imported` for what it imports."""
    return sorted((m, d) for m, deps in _imports().items() if importer(m) for d in deps if imported(d))


METHODS = _within("attacks", "defenses")


def test_methods_import_only_the_core() -> None:
    bad = _edges(METHODS, lambda d: _within("benchmark")(d) and not _within("benchmark.core")(d) and d != "benchmark")
    assert not bad, f"attacks/ and defenses/ may import only benchmark.core: {bad}"


def test_methods_never_import_the_sources() -> None:
    """Downloading, archives and loaders are the harness's business: a method gets its images as tensors."""
    bad = _edges(METHODS, _within("benchmark.sources"))
    assert not bad, f"attacks/ and defenses/ import benchmark.sources: {bad}"


def test_sources_stand_on_core_only() -> None:
    bad = _edges(_within("benchmark.sources"), _within(*ABOVE_SOURCES))
    assert not bad, f"benchmark/sources imports the floors above it (or the methods): {bad}"


def test_core_imports_nothing_above_it() -> None:
    bad = _edges(_within("benchmark.core"), _within(*ABOVE_CORE))
    assert not bad, f"benchmark/core imports the floors above it: {bad}"


def test_the_product_never_imports_the_studies() -> None:
    """Studies (scale study, perf, GPU check) stand on the product; the product runs without them."""
    bad = _edges(_within(*PRODUCT), _within("studies"))
    assert not bad, f"benchmark/, attacks/ and defenses/ may not import studies/: {bad}"


def test_no_import_cycles() -> None:
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return [*path, m, d]
            if d not in state and (cycle := visit(d, [*path, m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_tests_mirror_the_floors() -> None:
    """One folder per floor (and the studies), helpers apart: a new test file goes beside what it tests."""
    tests = ROOT / "tests"
    floors = {"core", "methods", "sources", "weights", "run", "report", "studies", "e2e", "helpers"}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name not in ("__pycache__", "artifacts")}
    assert folders == floors, f"tests/ should hold exactly {sorted(floors)}"
    assert not list(tests.glob("test_*.py")), "test files belong in the folder of the floor they test"
    assert not list((tests / "helpers").glob("test_*.py")), "tests/helpers/ holds what tests share, no tests"
