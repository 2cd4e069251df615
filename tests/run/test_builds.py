"""A torch/torchvision pair that does not go together stops the CLI at start-up with one clear message."""

from __future__ import annotations

from pathlib import Path

from benchmark.run.builds import pair_problem
from tests.helpers.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_matching_pairs_pass_and_mismatches_are_named() -> None:
    assert pair_problem("2.14.1", "0.29.1") is None and pair_problem("2.2.0+cpu", "0.17.0+cpu") is None
    assert pair_problem("2.14.1+cu130", "0.29.1") is None  # PyPI's torchvision carries no local tag
    wrong = pair_problem("2.14.1", "0.28.0")
    assert wrong == "torchvision 0.28.0 is not built for torch 2.14.1 (that torch needs 0.29.x)"
    assert "different builds (+cpu vs +cu121)" in (pair_problem("2.14.1+cpu", "0.29.1+cu121") or "")


def test_a_torchvision_that_cannot_load_is_reported_before_hydra(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "torchvision"  # what a torchvision built for another torch does on import
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    proc = run_cli(["experiment=quickstart"], tmp_path, timeout=120, PYTHONPATH=f"{fake.parent}:{ROOT}")
    assert proc.returncode == 2
    assert "torchvision cannot be imported with torch" in proc.stderr and "operator torchvision::nms" in proc.stderr
    assert 'pip install "torch==2.14.1" "torchvision==0.29.1"' in proc.stderr
    assert "Error locating target" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
