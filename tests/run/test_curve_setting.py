"""`defense.curve`: all points (the paper presets' default), off, or N points spread evenly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from benchmark.core.errors import ConfigError
from benchmark.run.cell import select_points
from benchmark.run.config import build_run_config, check_curve
from defenses.base import CurvePoint
from tests.conftest import TINY, compose_cfg
from tests.helpers.cli import run_cli


def _curve(n: int) -> list[CurvePoint]:
    return [CurvePoint({"threshold": i / 10}, nn.Identity) for i in range(n)]


def test_points_are_spread_evenly_from_first_to_last() -> None:
    curve = _curve(19)
    assert [p.params["threshold"] for p in select_points(curve, 3)] == [0.0, 0.9, 1.8]
    assert len(select_points(curve, 5)) == 5 and select_points(curve, None) == curve == select_points(curve, 40)
    assert select_points(curve, 0) == [] and len(select_points(curve, 1)) == 1


def test_the_setting_is_checked_and_defaults_to_every_point() -> None:
    assert check_curve("all") is None and check_curve("off") == 0 and check_curve(False) == 0 and check_curve(7) == 7
    for bad in (0, -2, "some", 2.5, True):
        with pytest.raises(ConfigError, match=r"defense.curve=.* is invalid: choose all, off, or a number"):
            check_curve(bad)
    assert build_run_config(compose_cfg(["experiment=rnp_cifar10"])).curve is None  # a paper preset: every point
    assert build_run_config(compose_cfg(["experiment=quickstart"])).curve == 10  # a minute on 2 cores: 10 of 19


def test_off_writes_no_curve_and_n_writes_n_points(tmp_path: Path) -> None:
    off, three = tmp_path / "off", tmp_path / "three"
    proc = run_cli([*TINY, "defense.curve=off", f"hydra.run.dir={off}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((off / "result.json").read_text())
    assert not (off / "curve.csv").exists() and "curve" not in result["timing_s"]
    assert "curve" not in result["defense_info"]
    proc = run_cli([*TINY, "defense.curve=3", f"hydra.run.dir={three}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((three / "result.json").read_text())
    assert [row["threshold"] for row in result["defense_info"]["curve"]] == [0.0, 0.45, 0.9]
    assert len((three / "curve.csv").read_text().splitlines()) == 4 and "curve" in result["timing_s"]
