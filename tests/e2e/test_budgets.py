"""Tested for free: every option has a budget row, and runs end to end as a `debug=default` cell.

The smoke runs check that a cell completes and records a valid result; what each method achieves is
tested elsewhere at its shrunk efficacy budget.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from benchmark.run.cell import run_cell
from benchmark.run.config import build_run_config
from benchmark.run.record import result_problems
from benchmark.run.runtime import start_runtime
from tests.conftest import compose_cfg, group_options
from tests.helpers.budgets import BUDGETS

DEBUG = ["debug=default"]


@pytest.mark.parametrize("group", sorted(BUDGETS))
def test_every_option_has_a_budget_row_and_every_row_an_option(group: str) -> None:
    options, rows = set(group_options(group)), set(BUDGETS[group])
    assert not options - rows, f"add rows to tests/helpers/budgets.py for {group}: {sorted(options - rows)}"
    assert not rows - options, f"tests/helpers/budgets.py has rows for no option of {group}: {sorted(rows - options)}"


def _smoke(group: str) -> list:
    params = []
    for option, budget in BUDGETS[group].items():
        marks = [pytest.mark.slow] if budget.speed == "slow" else []
        if not budget.offline:
            continue  # needs a download: the default-path tests run it against local stand-ins
        params.append(pytest.param(option, budget.shrink, marks=marks, id=option))
    return params


def _run_debug_cell(overrides: list[str], run_dir: Path) -> dict:
    rc = build_run_config(compose_cfg([*DEBUG, *overrides]))
    result = run_cell(rc, run_dir, start_runtime(rc))  # seeded, threaded and checked as the CLI does
    assert result_problems(result) == []
    return result


@pytest.mark.parametrize("option,shrink", _smoke("attack"))
def test_every_attack_runs_as_a_debug_cell(
    option: str, shrink: tuple[str, ...], tmp_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    result = _run_debug_cell([f"attack={option}", "defense=none", *shrink], tmp_home / "run")
    assert result["cell"]["attack"] == option and result["model_source"] == "trained"
    wanted = BUDGETS["attack"][option].progress
    assert not wanted or any(r.getMessage().startswith(wanted) for r in caplog.records), f"no '{wanted}' line"


@pytest.mark.parametrize("option,shrink", _smoke("defense"))
def test_every_defense_runs_as_a_debug_cell(option: str, shrink: tuple[str, ...], tmp_home: Path) -> None:
    result = _run_debug_cell([f"defense={option}", *shrink], tmp_home / "run")
    assert result["cell"]["defense"] == option


@pytest.mark.parametrize("option,shrink", _smoke("arch"))
def test_every_arch_runs_as_a_debug_cell(option: str, shrink: tuple[str, ...], tmp_home: Path) -> None:
    result = _run_debug_cell([f"arch={option}", "defense=clp", *shrink], tmp_home / "run")
    assert result["cell"]["arch"] == option


@pytest.mark.parametrize("option,shrink", _smoke("dataset"))
def test_every_offline_dataset_runs_as_a_debug_cell(option: str, shrink: tuple[str, ...], tmp_home: Path) -> None:
    result = _run_debug_cell([f"dataset={option}", *shrink], tmp_home / "run")
    assert result["cell"]["dataset"] == option


def test_debug_preset_shrinks_any_command_and_the_chosen_defense() -> None:
    cfg = compose_cfg(["experiment=rnp_cifar10", "defense=anp", *DEBUG])
    assert cfg.dataset.name == "embedded" and cfg.train.epochs == 1 and cfg.model.source == "train"
    assert cfg.defense.iterations == 2 and cfg.device == "cpu"
    assert compose_cfg(["defense=anp"]).defense.iterations == 2000  # without debug: untouched


@pytest.mark.slow
@pytest.mark.parametrize("preset", group_options("experiment"))
def test_every_experiment_preset_smoke_runs_with_debug(preset: str, tmp_home: Path) -> None:
    """The preset's own cell (its grid's first values), shrunk: the preset's settings compose and run."""
    result = _run_debug_cell([f"experiment={preset}"], tmp_home / "run")
    assert result["config"]["sweep_name"] == "debug"
