"""The report's premise column, its "removed" criterion for the best defense, and its implant flag."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from benchmark.core.io import atomic_write_json
from benchmark.report.table import PREMISE_NOTE
from benchmark.report.write import write_report
from tests.report.test_report import pivot_rows, result_of

CA_ASR = "Clean accuracy / ASR (%)"
RECOVERY = "failed: mask recovery stayed at chance (best acc 0.118 <= 0.2)"


def write_cell(root: Path, attack: str, defense: str, seed: int, ca: float, asr: float, **extra: Any) -> None:
    result = {**result_of(attack, defense, seed, ca, asr), **extra}
    atomic_write_json(root / "cifar10/resnet18" / attack / defense / f"seed{seed}" / "result.json", result)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """badnets: RNP keeps ASR at 30% (premise failed in seed 1) and ANP at 5% within budget; blend: only
    defenses that leave ASR high; sig: seed 1's backdoor did not implant (ASR before 0.096)."""
    root = tmp_path / "grid"
    implanted = {"asr_before": 1.0, "bar": 0.5, "held": True}
    for seed in (0, 1):
        rnp_premise = RECOVERY if seed == 1 else "held"
        write_cell(root, "badnets", "rnp", seed, 0.90, 0.30, premise=rnp_premise, implant=implanted)
        write_cell(root, "badnets", "anp", seed, 0.89, 0.05, premise="held", implant=implanted)
        write_cell(root, "blend", "rnp", seed, 0.91, 0.60, premise="held", implant=implanted)
        write_cell(root, "blend", "ft", seed, 0.92, 0.95, premise="held", implant=implanted)
        sig = {"asr_before": 0.096, "bar": 0.5, "held": False} if seed == 1 else implanted
        write_cell(root, "sig", "anp", seed, 0.90, 0.02, premise="held", implant=sig)
    write_cell(root, "sig", "clp", 0, 0.90, 0.5)  # written before premises existed: shown as "–"
    return root


def test_premise_is_shown_beside_the_numbers_with_how_to_read_it(sweep: Path) -> None:
    write_report(sweep, max_ca_drop=0.05, plots=False)
    md = (sweep / "results.md").read_text()
    table = md.split("### Premise\n\n", 1)[1]
    assert table.startswith(PREMISE_NOTE)
    rows = pivot_rows(f"### Premise\n\n{table.split(chr(10) * 2, 1)[1]}", "Premise")
    assert rows["badnets"]["rnp"] == "failed 1/2: mask recovery stayed at chance (best acc 0.118 <= 0.2)"
    assert rows["badnets"]["anp"] == "held" and rows["sig"]["clp"] == "–"
    with (sweep / "results.csv").open() as f:
        cells = list(csv.DictReader(f))
    assert {r["premise"] for r in cells if r["attack"] == "badnets" and r["defense"] == "rnp"} == {"held", RECOVERY}
    with (sweep / "summary.csv").open() as f:
        summary = {(r["attack"], r["defense"]): r for r in csv.DictReader(f)}
    assert summary[("badnets", "rnp")]["premise"].startswith("failed 1/2")
    html = (sweep / "report.html").read_text()
    assert "<h3>Premise</h3>" in html and "failed 1/2: mask recovery stayed at chance" in html


def test_the_best_defense_must_remove_the_backdoor(sweep: Path) -> None:
    write_report(sweep, max_ca_drop=0.05, plots=False)
    md = (sweep / "results.md").read_text()
    rows = pivot_rows(md, CA_ASR)
    assert rows["badnets"]["anp"].startswith("**") and not rows["badnets"]["rnp"].startswith("**")
    assert not any(v.startswith("**") for v in rows["blend"].values())  # 60% and 95% ASR: nothing removed
    assert (
        "- blend: no best defense: no defense within the clean-accuracy budget removed the backdoor "
        "(mean ASR <= 10%); the lowest, rnp, leaves 60.0%." in md
    )
    assert "removed the backdoor (mean ASR at most 10%)" in (sweep / "report.html").read_text()


def test_a_backdoor_that_did_not_implant_is_flagged_and_never_ranked(sweep: Path) -> None:
    write_report(sweep, max_ca_drop=0.05, plots=False)
    md = (sweep / "results.md").read_text()
    assert not any(v.startswith("**") for v in pivot_rows(md, CA_ASR)["sig"].values())  # ANP at 2% is not ranked
    assert "- sig: no best defense: the backdoor did not implant in seed(s) 1 (ASR before below the implant" in md
    with (sweep / "results.csv").open() as f:
        cells = {(r["attack"], r["defense"], r["seed"]): r for r in csv.DictReader(f)}
    assert cells[("sig", "anp", "1")]["implanted"] == "False" and cells[("sig", "anp", "1")]["der"] == ""
    assert cells[("sig", "anp", "0")]["implanted"] == "True" and cells[("sig", "anp", "0")]["der"] != ""
    with (sweep / "summary.csv").open() as f:
        summary = {(r["attack"], r["defense"]): r for r in csv.DictReader(f)}
    assert summary[("sig", "anp")]["not_implanted_seeds"] == "1"
    assert "the backdoor did not implant in seed(s) 1" in (sweep / "report.html").read_text()
