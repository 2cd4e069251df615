"""The scale study (issue 18): its report tells points apart by model size, and the proxy preset keeps RNP's
direction (the backdoor removed at a small clean-accuracy cost) at the authors' settings."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmark.core.errors import DataMissingError
from benchmark.report.scale import main, write_scale_report
from benchmark.run.cell import run_cell
from benchmark.run.config import build_run_config
from benchmark.run.runtime import setup_runtime
from tests.conftest import compose_cfg


def _cell(overrides: list[str], run_dir: Path) -> dict:
    cfg = compose_cfg(overrides)
    rc = build_run_config(cfg)
    return run_cell(cfg, run_dir, setup_runtime(rc.seed, rc.device, rc.threads, rc.precision))


def test_scale_report_separates_widths_and_records_rnp_phases(tmp_home: Path) -> None:
    root = tmp_home / "sweep"
    for width in (4, 8):
        run_dir = root / f"convnet_w{width}" / "badnets" / "rnp" / "seed0"
        result = _cell(["experiment=scale_study", "debug=default", f"arch.kwargs.width={width}"], run_dir)
        info = result["defense_info"]
        assert info["unlearn"]["seconds"] > 0 and info["recover"]["seconds"] > 0  # recorded for the study
        assert "0.0" in info["masks_below"]
    pts, files = write_scale_report(root)
    assert [p.key["width"] for p in pts] == [4, 8]  # one point per width, smaller model first
    assert pts[0].key["params"] < pts[1].key["params"]
    assert pts[0].key["bn_channels"] < pts[1].key["bn_channels"]
    rows = list(csv.DictReader((root / "scale.csv").open()))
    assert len(rows) == 2 and {r["defense"] for r in rows} == {"rnp"}
    table = (root / "scale.md").read_text()
    assert "convnet w4" in table and "convnet w8" in table and "masks at 0" in table
    assert all(f.exists() for f in files)


def test_scale_report_cli_names_a_dir_without_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


# RNP on experiment=proxy (seed 0), measured on a shared 2-core AMD EPYC (README, "Scale study"): clean acc
# 0.909 -> 0.753 (cost 0.156), ASR 1.000 -> 0.000 (the test passed in 267 s there). The same point's
# seeds 1 and 2 cost 0.162 and 0.501 (seed 2's unlearning ended at chance and recovery could not restore it),
# so the cost bound allows that spread (a run on other hardware may take either branch); what it guards is the
# direction: a defense that leaves the backdoor fails the ASR bound, one that destroys the model (cost ~0.8)
# the cost bound.
PROXY_MAX_ASR_AFTER = 0.10
PROXY_MAX_CA_COST = 0.60


@pytest.mark.slow
def test_proxy_rnp_removes_the_backdoor_at_a_bounded_cost(tmp_home: Path) -> None:
    """experiment=proxy end to end (about 6 minutes on 2 shared cores): the backdoor takes, RNP removes it."""
    try:
        result = _cell(["experiment=proxy"], tmp_home / "proxy")
    except DataMissingError as exc:  # no Debian package and no network: say what is missing
        pytest.skip(f"full Fashion-MNIST is not available: {exc}")
    before, after = result["before"], result["after"]
    assert before["clean_acc"] >= 0.88 and before["asr"] >= 0.95, before  # the backdoor took
    assert after["asr"] <= PROXY_MAX_ASR_AFTER, after
    assert before["clean_acc"] - after["clean_acc"] <= PROXY_MAX_CA_COST, (before, after)
    assert result["defense_info"]["unlearn"]["reached_threshold"]
