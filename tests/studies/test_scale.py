"""The scale study (studies/): its report tells points apart by model size; the proxy presets keep RNP's
direction: at the authors' settings (experiment=proxy: the backdoor removed at a large but bounded cost) and
where the premise holds (experiment=proxy_premise: removed at a cost near the paper's)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmark.core.errors import DataMissingError
from studies.scale import main, write_scale_report
from tests.conftest import run_composed_cell


def test_scale_report_separates_widths_and_records_rnp_phases(tmp_home: Path) -> None:
    root = tmp_home / "sweep"
    for width in (4, 8):
        run_dir = root / f"convnet_w{width}" / "badnets" / "rnp" / "seed0"
        result = run_composed_cell(["experiment=scale_study", "debug=default", f"arch.kwargs.width={width}"], run_dir)
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


# RNP on experiment=proxy removes the backdoor at a large cost that varies by seed: where unlearning ends at
# chance, recovery cannot restore it and the cost is several times larger (docs/scale_study.md). The cost bound
# allows that spread (a run on other hardware may take either branch); what it guards is the direction: a
# defense that leaves the backdoor fails the ASR bound, one that destroys the model the cost bound.
PROXY_MAX_ASR_AFTER = 0.10
PROXY_MAX_CA_COST = 0.60


@pytest.mark.slow
def test_proxy_rnp_removes_the_backdoor_at_a_bounded_cost(tmp_home: Path) -> None:
    """experiment=proxy end to end (minutes on a CPU): the backdoor takes, RNP removes it."""
    try:
        result = run_composed_cell(["experiment=proxy"], tmp_home / "proxy")
    except DataMissingError as exc:  # no Debian package and no network: say what is missing
        pytest.skip(f"full Fashion-MNIST is not available: {exc}")
    before, after = result["before"], result["after"]
    assert before["clean_acc"] >= 0.88 and before["asr"] >= 0.95, before  # the backdoor took
    assert after["asr"] <= PROXY_MAX_ASR_AFTER, after
    assert before["clean_acc"] - after["clean_acc"] <= PROXY_MAX_CA_COST, (before, after)
    assert result["defense_info"]["unlearn"]["reached_threshold"]


# RNP on experiment=proxy_premise (ResNet-18 width 16, 3 epochs, unlearning lr 0.001): unlike
# experiment=proxy, this point shows the paper's direction, the backdoor removed by pruning a few percent of
# the channels at a clean-accuracy cost near the paper's, its unlearning descending gradually
# (docs/scale_study.md). The bounds keep that with a margin for another CPU's arithmetic (the test runs
# seed 0); RNP at the authors' lr 0.01 on these models collapses and fails them.
PREMISE_MAX_ASR_AFTER = 0.10
PREMISE_MAX_CA_COST = 0.08


@pytest.mark.slow
def test_proxy_premise_rnp_removes_the_backdoor_at_the_papers_cost(tmp_home: Path) -> None:
    """experiment=proxy_premise end to end (a quarter of an hour on one core): the backdoor takes, RNP removes it
    at a small clean-accuracy cost, its unlearning descending gradually to the threshold."""
    try:
        result = run_composed_cell(["experiment=proxy_premise"], tmp_home / "proxy_premise")
    except DataMissingError as exc:  # no Debian package and no network: say what is missing
        pytest.skip(f"full Fashion-MNIST is not available: {exc}")
    before, after, info = result["before"], result["after"], result["defense_info"]
    assert before["clean_acc"] >= 0.90 and before["asr"] >= 0.95, before  # the backdoor took
    assert after["asr"] <= PREMISE_MAX_ASR_AFTER, after
    assert before["clean_acc"] - after["clean_acc"] <= PREMISE_MAX_CA_COST, (before, after)
    assert info["unlearn"]["epochs"] >= 8, info["unlearn"]  # a gradual descent, not a collapse within a few epochs
    assert info["pruned"] <= 0.1 * info["total_channels"], info["pruned"]  # a few channels, not a tenth of the net
