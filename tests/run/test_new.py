"""`python -m benchmark.new`: a scaffolded method passes the project's own checks as written, in a copy of the tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.new import ScaffoldError, scaffold

ROOT = Path(__file__).resolve().parents[2]
TREE = ("attacks", "defenses", "benchmark", "conf", "docs", "tests", "studies", "pyproject.toml")


def copy_tree(dest: Path) -> Path:
    """The project's sources (no virtual environment, no outputs) under `dest`."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def run(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    """A Python command in the copy: its own packages first on the path, its own home."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "HOME": str(home), "BENCHMARK_HOME": str(home / "bench")}
    env["WANDB_MODE"] = "disabled"
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["defense", "attack"])
def test_scaffold_passes_the_projects_checks_as_written(kind: str, tmp_path: Path) -> None:
    tree, name = copy_tree(tmp_path / "tree"), f"my_{kind}"
    proc = run(["-m", "benchmark.new", kind, name], tree, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tree / f"{kind}s" / f"{name}.py").is_file() and (tree / "conf" / kind / f"{name}.yaml").is_file()
    checks = [
        f"tests/report/test_references.py::test_each_method_cites_its_paper_and_the_references_page[{kind}-{name}]",
        f"tests/e2e/test_budgets.py::test_every_option_has_a_budget_row_and_every_row_an_option[{kind}]",
        f"tests/run/test_config.py::test_every_option_composes_and_validates[{kind}-{name}]",
        f"tests/e2e/test_budgets.py::test_every_{kind}_runs_as_a_debug_cell[{name}]",
    ]
    proc = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *checks], tree, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "4 passed" in proc.stdout
    cell = ["debug=default", f"{kind}={name}", f"{'attack' if kind == 'defense' else 'defense'}=none"]
    proc = run(["-m", "benchmark", *cell, f"hydra.run.dir={tmp_path / 'run'}"], tree, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["cell"][kind] == name


def test_scaffold_refuses_a_bad_or_taken_name(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match="not allowed"):
        scaffold("defense", "My-Defense", tmp_path)
    with pytest.raises(ScaffoldError, match="not one of"):
        scaffold("dataset", "x", tmp_path)
    with pytest.raises(ScaffoldError, match="exists already"):
        scaffold("defense", "rnp", ROOT)
    with pytest.raises(ScaffoldError, match="not found"):
        scaffold("defense", "fresh", tmp_path)
