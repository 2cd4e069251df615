"""`python -m benchmark --help` shows the project's page; a lab's own config dir adds presets (Hydra search path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from benchmark.run.grid import missing_options
from tests.conftest import CONF, compose_cfg, group_options

ROOT = Path(__file__).resolve().parents[2]
USER_GROUPS = ["dataset", "arch", "attack", "defense", "train", "logger", "experiment"]


def run_benchmark(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "BENCHMARK_HOME": str(home / "bench"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args], cwd=home, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def lab_conf(tmp_path: Path) -> Path:
    """A lab's preset in its own folder, outside the package: embedded data, a seed of its own."""
    lab = tmp_path / "lab_conf"
    (lab / "experiment").mkdir(parents=True)
    (lab / "experiment" / "lab_quick.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /dataset: embedded\n  - override /arch: convnet\n"
        "seed: 17\nsweep_name: lab_quick\n"
    )
    return lab


def test_help_shows_the_project_page(tmp_path: Path) -> None:
    proc = run_benchmark(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = proc.stdout
    for text in ("One run is one CELL", "== Sweeps ==", "Resume:", "python -m benchmark.report", "model.source=auto"):
        assert text in page
    rows = {line.split()[0]: line for line in page.splitlines() if line.startswith("  ") and line.split()}
    for group in USER_GROUPS:  # every option a user can pick, listed on its group's row
        assert all(option in rows[group] for option in group_options(group)), group
    assert "parallel" in rows["hydra/launcher"] and "slurm" in rows["hydra/launcher"]
    assert "attack_dataset " not in page  # the specialisation groups are applied by themselves, not picked
    assert f"paths.data        {tmp_path / 'bench' / 'data'}" in page  # resolved, from BENCHMARK_HOME


def test_help_lists_a_lab_preset_added_to_the_search_path(tmp_path: Path, lab_conf: Path) -> None:
    proc = run_benchmark([f"hydra.searchpath=[file://{lab_conf}]", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.strip().startswith("experiment "))
    assert "lab_quick" in row and "quickstart" in row


def test_a_lab_preset_in_an_extra_config_dir_composes(lab_conf: Path) -> None:
    cfg = compose_cfg([f"hydra.searchpath=[file://{lab_conf}]", "experiment=lab_quick"])
    assert cfg.seed == 17 and cfg.dataset.name == "embedded" and cfg.sweep_name == "lab_quick"


def test_the_sweep_check_accepts_lab_options_and_still_names_missing_ones(lab_conf: Path) -> None:
    config = OmegaConf.create(
        {
            "hydra": {
                "searchpath": [f"file://{lab_conf}"],
                "sweeper": {"params": {"experiment": "lab_quick,quickstart,nosuch"}},
            }
        }
    )
    problems = missing_options(config, CONF)
    assert len(problems) == 1 and problems[0].startswith("experiment=nosuch not in conf/experiment/")
    assert "lab_quick" in problems[0]  # named among the choices


def test_help_names_no_sweep_folder_the_quickstart_does_not_use(tmp_path: Path) -> None:
    for args in (["--help"], ["experiment=quickstart", "--help"]):
        proc = run_benchmark(args, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "multirun/default" not in proc.stdout and "outputs/multirun/<sweep_name>/" in proc.stdout
        assert "e.g. quickstart" in proc.stdout
