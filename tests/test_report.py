"""The report from known result.json files: CSV rows, pivot mean ± std, best defense, failures, plots."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from benchmark.core.io import atomic_write_json
from benchmark.report.table import Stat
from benchmark.report.write import main, write_report

# (attack, defense) -> per seed (clean acc, ASR) after the defense; the backdoored model of a seed has
# clean acc BASE_CA[seed] and ASR 1.0 (the `before` of every cell of that seed).
BASE_CA = {0: 0.90, 1: 0.92, 2: 0.94}
AFTER = {
    ("badnets", "rnp"): [(0.88, 0.10), (0.90, 0.00), (0.92, 0.20)],  # CA 90.0 ± 2.0, ASR 10.0 ± 10.0
    ("badnets", "anp"): [(0.70, 0.00), (0.70, 0.00), (0.70, 0.00)],  # lowest ASR, but loses 22 points
    ("badnets", "clp"): [(0.91, 0.50), (0.93, 0.40), (0.95, 0.60)],  # keeps CA, ASR 50.0 ± 10.0
    ("blend", "rnp"): [(0.90, 0.30), (0.90, 0.30), (0.90, 0.30)],
    ("blend", "anp"): [(0.91, 0.05), (0.91, 0.05)],  # seed 2 failed
    ("blend", "none"): [(BASE_CA[s], 1.0) for s in range(3)],
}


def fake_result(attack: str, defense: str, seed: int, ca: float, asr: float) -> dict[str, Any]:
    before = {"clean_acc": BASE_CA[seed], "asr": 1.0, "robust_acc": 0.0}
    curve = [
        {
            "threshold": t,
            "pruned": int(100 * t),
            "clean_acc": ca + (0.2 - t) / 10,
            "asr": max(0.0, 1 - 3 * t),
            "robust_acc": min(1.0, 3 * t),
        }
        for t in (0.0, 0.1, 0.2, 0.3)
    ]
    info = {"selected_threshold": 0.2, "curve": curve} if defense in ("rnp", "anp") else {}
    return {
        "schema": 1,
        "cell": {"attack": attack, "dataset": "cifar10", "arch": "resnet18", "defense": defense, "seed": seed},
        "model_source": "cache",
        "before": before,
        "after": {"clean_acc": ca, "asr": asr, "robust_acc": 1 - asr},
        "der": (max(0.0, 1.0 - asr) - max(0.0, BASE_CA[seed] - ca) + 1) / 2,
        "defense_info": info,
        "timing_s": {"data": 1.0, "model": 2.0, "evaluate": 3.0, "defense": 10.0 + seed, "total": 20.0 + seed},
        "config": {"seed": seed},
        "model_meta": {"train_seconds": 100.0},
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "paper-grid"
    for (attack, defense), values in AFTER.items():
        for seed, (ca, asr) in enumerate(values):
            atomic_write_json(
                root / "cifar10/resnet18" / attack / defense / f"seed{seed}" / "result.json",
                fake_result(attack, defense, seed, ca, asr),
            )
    failed = {
        "schema": 1,
        "status": "failed",
        "error": "RuntimeError: CUDA out of memory\ntraceback...",
        "cell": {"attack": "blend", "dataset": "cifar10", "arch": "resnet18", "defense": "anp", "seed": 2},
    }
    atomic_write_json(root / "cifar10/resnet18/blend/anp/seed2/failed.json", failed)
    torn = root / "cifar10/resnet18/blend/clp/seed0/result.json"
    torn.parent.mkdir(parents=True)
    torn.write_text('{"schema": 1, "cell": {"attack": "blend"')
    (root / ".submitit" / "1").mkdir(parents=True)  # launcher files are not cells
    (root / ".submitit" / "1" / "result.json").write_text("{}")
    return root


def test_stat_is_mean_and_sample_std() -> None:
    s = Stat.of([0.88, 0.90, 0.92])
    assert s is not None and s.n == 3 and s.mean == pytest.approx(0.90) and s.std == pytest.approx(0.02)
    assert s.pct() == "90.0 ± 2.0"
    assert Stat.of([0.5]) == Stat(0.5, None, 1) and Stat.of([0.5]).pct() == "50.0"
    assert Stat.of([None]) is None


def test_csv_has_one_row_per_cell_with_seconds_per_phase(sweep: Path) -> None:
    write_report(sweep, plots=False)
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert len(rows) == 17 + 2  # 17 results, 1 failed, 1 invalid; .submitit ignored
    status = {(r["attack"], r["defense"], r["seed"]): r["status"] for r in rows}
    assert status[("blend", "anp", "2")] == "failed" and status[("blend", "clp", "0")] == "invalid"
    ok = [r for r in rows if r["status"] == "ok"]
    assert {"seconds_data", "seconds_model", "seconds_evaluate", "seconds_defense", "seconds_total"} <= set(rows[0])
    assert float(ok[0]["seconds_model"]) == 2.0 and float(ok[0]["train_seconds"]) == 100.0
    summary = {(r["attack"], r["defense"]): r for r in csv.DictReader((sweep / "summary.csv").open())}
    assert float(summary[("badnets", "rnp")]["clean_acc_mean"]) == pytest.approx(0.90)
    assert float(summary[("badnets", "rnp")]["asr_std"]) == pytest.approx(0.10)
    assert float(summary[("badnets", "no defense")]["clean_acc_mean"]) == pytest.approx(0.92)
    assert summary[("blend", "anp")]["n"] == "2" and summary[("blend", "anp")]["failed"] == "1"


def pivot_rows(md: str, title: str) -> dict[str, list[str]]:
    """The rows of the markdown table under `### {title}`, keyed by their first cell."""
    section = md.split(f"### {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header = [c.strip() for c in section[0].strip("|").split("|")]
    rows = {}
    for line in section[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_pivot_mean_std_best_defense_and_failures(sweep: Path) -> None:
    write_report(sweep, max_ca_drop=0.05, plots=False)
    md = (sweep / "results.md").read_text()
    assert "| attack | no defense | rnp | anp | clp |" in md  # baseline first, RNP and ANP side by side
    rows = pivot_rows(md, "Clean accuracy / ASR (%)")
    assert rows["badnets"]["no defense"] == "92.0 ± 2.0 / 100.0 ± 0.0"
    # rnp: CA 90.0 ± 2.0 (2 points below the baseline), ASR 10.0 ± 10.0: best, since anp's lower ASR costs 22 points
    assert rows["badnets"]["rnp"] == "**90.0 ± 2.0 / 10.0 ± 10.0**"
    assert rows["badnets"]["anp"] == "70.0 ± 0.0 / 0.0 ± 0.0"
    assert rows["badnets"]["clp"] == "93.0 ± 2.0 / 50.0 ± 10.0"
    assert rows["blend"]["anp"] == "**91.0 ± 0.0 / 5.0 ± 0.0 (n=2) (1 failed)**"
    assert rows["blend"]["clp"] == "failed (1)"  # its only file is invalid
    assert pivot_rows(md, "RNP vs ANP")["badnets"]["ASR ANP"] == "0.0 ± 0.0"
    runtime = pivot_rows(md, "Seconds: backdoor training per model; per cell, defense phase / whole cell")
    assert runtime["badnets"]["rnp"] == "11.0 ± 1.0 / 21.0 ± 1.0" and runtime["blend"]["clp"] == "–"
    assert runtime["badnets"]["backdoor training"] == "100.0 ± 0.0"
    failures = md.split("## Failed or invalid cells")[1]
    assert "cifar10/resnet18/blend/anp/seed2 | failed | RuntimeError: CUDA out of memory |" in failures
    assert "cifar10/resnet18/blend/clp/seed0 | invalid | unreadable" in failures
    # a looser rule (up to 25 points of clean accuracy) makes ANP the best on badnets
    write_report(sweep, max_ca_drop=0.25, plots=False)
    rows = pivot_rows((sweep / "results.md").read_text(), "Clean accuracy / ASR (%)")
    assert rows["badnets"]["anp"].startswith("**") and not rows["badnets"]["rnp"].startswith("**")


def test_plots_and_the_command_line(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    plots = sorted(p.name for p in (sweep / "plots").glob("*.png"))
    assert plots == [
        "clean_vs_asr_cifar10_resnet18.png",
        "pruning_cifar10_resnet18_badnets.png",
        "pruning_cifar10_resnet18_blend.png",
    ]
    assert all((sweep / "plots" / p).stat().st_size > 5000 for p in plots)
    assert (
        "![pruning_cifar10_resnet18_badnets](plots/pruning_cifar10_resnet18_badnets.png)"
        in (sweep / "results.md").read_text()
    )
    assert "2 of 19 cells failed or are invalid" in printed


def test_missing_dir_fails_with_its_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--max-ca-drop", "5"])
