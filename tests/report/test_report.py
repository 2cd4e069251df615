"""The report from known result.json files: CSV rows, pivot mean ± std, best defense, failures, plots."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from benchmark.core.io import atomic_write_json
from benchmark.report.markdown import DER_TITLE, SECONDS_TITLE
from benchmark.report.table import BASELINE, Stat, collect, group_cells
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
    ("wanet", "anp"): [(0.50, 0.0), (0.52, 0.0), (0.7475000023841858, 0.0)],  # loses > 5 points: no best defense
}
TRAINED = {("badnets", "rnp", 0)}  # the cell that trained its seed's model: its timing_s includes the training
TRAIN_S, PREPARE_S = 100.0, 4.0


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
        "model_meta": {"train_seconds": TRAIN_S, "attack_prepare_seconds": PREPARE_S},
    }


def result_of(attack: str, defense: str, seed: int, ca: float, asr: float) -> dict[str, Any]:
    """fake_result, with the training in the timings of the cell that trained the model."""
    result = fake_result(attack, defense, seed, ca, asr)
    if (attack, defense, seed) in TRAINED:
        result["model_source"] = "trained"
        result["timing_s"]["model"] += TRAIN_S + PREPARE_S
        result["timing_s"]["total"] += TRAIN_S + PREPARE_S + 0.0001234  # float noise the CSV rounds away
    return result


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "paper-grid"
    for (attack, defense), values in AFTER.items():
        for seed, (ca, asr) in enumerate(values):
            atomic_write_json(
                root / "cifar10/resnet18" / attack / defense / f"seed{seed}" / "result.json",
                result_of(attack, defense, seed, ca, asr),
            )
    for attack, defense in (("blend", "anp"), ("trojan", "rnp")):  # trojan: its only cell failed, no baseline
        failed = {
            "schema": 1,
            "status": "failed",
            "error": "RuntimeError: CUDA out of memory\ntraceback...",
            "cell": {"attack": attack, "dataset": "cifar10", "arch": "resnet18", "defense": defense, "seed": 2},
        }
        atomic_write_json(root / f"cifar10/resnet18/{attack}/{defense}/seed2/failed.json", failed)
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
    assert len(rows) == 20 + 3  # 20 results, 2 failed, 1 invalid; .submitit ignored
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


def test_csv_rounds_float_noise(sweep: Path) -> None:
    write_report(sweep, plots=False)
    text = (sweep / "results.csv").read_text()
    rows = {(r["attack"], r["defense"], r["seed"]): r for r in csv.DictReader(text.splitlines())}
    assert rows[("wanet", "anp", "2")]["after_clean_acc"] == "0.7475"  # stored as 0.7475000023841858
    assert rows[("badnets", "rnp", "0")]["seconds_total"] == "124.0"  # 124.0001234: 3 decimals for seconds
    assert rows[("badnets", "rnp", "1")]["ca_change"] == "-0.02"
    # no value anywhere has more than 6 decimals (fractions) or 3 (seconds)
    for row in rows.values():
        for key, value in row.items():
            decimals = (
                len(value.split(".")[1]) if value.replace(".", "").replace("-", "").isdigit() and "." in value else 0
            )
            assert decimals <= (3 if "seconds" in key else 6), (key, value)
    summary = (sweep / "summary.csv").read_text()
    assert ",0.589167," in summary  # wanet anp clean acc mean (0.50 + 0.52 + 0.7475000023841858) / 3, rounded


def test_cell_seconds_leave_out_the_backdoor_training_of_trained_cells(sweep: Path) -> None:
    write_report(sweep, plots=False)
    rows = {(r["attack"], r["defense"], r["seed"]): r for r in csv.DictReader((sweep / "results.csv").open())}
    trained, cached = rows[("badnets", "rnp", "0")], rows[("badnets", "rnp", "1")]
    assert trained["model_source"] == "trained" and float(trained["seconds_total"]) == pytest.approx(124.0)
    assert float(trained["seconds_cell"]) == pytest.approx(20.0)  # 124 - 100 training - 4 attack preparation
    assert cached["model_source"] == "cache" and float(cached["seconds_cell"]) == float(cached["seconds_total"]) == 21.0
    assert float(trained["backdoor_seconds"]) == float(cached["backdoor_seconds"]) == TRAIN_S + PREPARE_S
    md = (sweep / "results.md").read_text()
    assert "a cell's seconds leave\nit out even when that cell trained the model" in md
    runtime = pivot_rows(md, SECONDS_TITLE)
    assert runtime["badnets"]["rnp"] == "11.0 ± 1.0 / 21.0 ± 1.0"  # 20, 21, 22: not (124 + 21 + 22) / 3
    assert runtime["badnets"]["backdoor training"] == "104.0 ± 0.0"  # one model per seed, training + preparation


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
    runtime = pivot_rows(md, SECONDS_TITLE)
    assert runtime["badnets"]["rnp"] == "11.0 ± 1.0 / 21.0 ± 1.0" and runtime["blend"]["clp"] == "–"
    failures = md.split("## Failed or invalid cells")[1]
    assert "cifar10/resnet18/blend/anp/seed2 | failed | RuntimeError: CUDA out of memory |" in failures
    assert "cifar10/resnet18/blend/clp/seed0 | invalid | unreadable" in failures
    # a looser rule (up to 25 points of clean accuracy) makes ANP the best on badnets
    write_report(sweep, max_ca_drop=0.25, plots=False)
    rows = pivot_rows((sweep / "results.md").read_text(), "Clean accuracy / ASR (%)")
    assert rows["badnets"]["anp"].startswith("**") and not rows["badnets"]["rnp"].startswith("**")


def test_no_best_defense_says_why(sweep: Path) -> None:
    write_report(sweep, max_ca_drop=0.05, plots=False)
    md = (sweep / "results.md").read_text()
    table = md.split("### Clean accuracy / ASR (%)\n\n", 1)[1].split("\n\n")
    notes = table[1].splitlines()  # the paragraph right under the pivot
    assert notes == [
        "- trojan: no best defense: no baseline: no cell of this attack finished, so there is no backdoored model "
        "to compare with.",
        "- wanet: no best defense: no defense within 5.0 points of the baseline's clean accuracy (92.0); "
        "the closest, anp, loses 33.1.",
    ]
    assert "**" not in pivot_rows(md, "Clean accuracy / ASR (%)")["wanet"]["anp"]
    write_report(sweep, max_ca_drop=0.40, plots=False)  # now anp qualifies on wanet: no note for it
    assert "- wanet: no best defense" not in (sweep / "results.md").read_text()


def test_der_pivot_shows_the_clean_accuracy_cost(sweep: Path) -> None:
    write_report(sweep, plots=False)
    der = pivot_rows((sweep / "results.md").read_text(), DER_TITLE)
    # anp on badnets: DER 88, 89, 90 from removing the whole ASR, but at a cost of 20, 22, 24 points
    assert der["badnets"]["anp"] == "89.0 ± 1.0 (−22.0)"
    assert der["badnets"]["clp"] == "75.0 ± 5.0 (+1.0)"  # clean accuracy rose by a point
    assert der["blend"]["clp"] == "–"


def test_pruning_plot_starts_at_the_unpruned_model(sweep: Path) -> None:
    from benchmark.report import plots

    groups = group_cells(collect(sweep))
    g = groups[("cifar10", "resnet18", "")]
    base = {m: g.stat("badnets", BASELINE, m) for m, _ in plots.CURVE_METRICS}
    fig = plots.pruning_figure("t", plots.threshold_curves(g, "badnets"), base)
    try:
        for ax, (metric, _) in zip(fig.axes, plots.CURVE_METRICS, strict=True):
            level = 100 * base[metric].mean  # clean acc 92, ASR 100, robust acc 0: the backdoored model
            assert ax.get_xticklabels()[0].get_text() == "unpruned"
            x0 = ax.get_xticks()[0]
            assert x0 < 0.0  # left of the smallest threshold, 0.0, where channels are already pruned
            lines = {line.get_label(): line for line in ax.get_lines()}
            assert list(lines["no defense"].get_ydata()) == [level, level]  # the horizontal reference
            star = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
            assert [(x, y) for ln in star for x, y in ln.get_xydata()] == [(x0, pytest.approx(level))]
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert "rnp (0 pruned at t=0)" in legend and "no defense" in legend
    finally:
        plots.plt.close(fig)


def test_plots_and_the_command_line(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    plots = sorted(p.name for p in (sweep / "plots").glob("*.png"))
    assert plots == [
        "clean_vs_asr_cifar10_resnet18.png",
        "pruning_cifar10_resnet18_badnets.png",
        "pruning_cifar10_resnet18_blend.png",
        "pruning_cifar10_resnet18_wanet.png",
    ]
    assert all((sweep / "plots" / p).stat().st_size > 5000 for p in plots)
    assert (
        "![pruning_cifar10_resnet18_badnets](plots/pruning_cifar10_resnet18_badnets.png)"
        in (sweep / "results.md").read_text()
    )
    assert str(sweep / "report.html") in printed
    assert "3 of 23 cells failed or are invalid" in printed


def test_missing_dir_fails_with_its_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--max-ca-drop", "5"])


def test_dir_without_cells_is_an_error_and_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "sweep" / ".submitit" / "1").mkdir(parents=True)  # launcher files only: not cells
    (tmp_path / "sweep" / ".submitit" / "1" / "result.json").write_text("{}")
    (tmp_path / "sweep" / "multirun.yaml").write_text("x: 1")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main([str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no result.json or failed.json under" in err and str(tmp_path / "sweep") in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_cells_whose_configs_differ_are_reported_apart_not_as_seeds(tmp_path: Path) -> None:
    """Two poison rates of one (attack, defense) are two experiments: never averaged as if they were seeds."""
    root = tmp_path / "rates"
    for rate, ca in ((0.05, 0.80), (0.10, 0.60)):
        for seed in (0, 1):
            result = fake_result("badnets", "rnp", seed, ca, 0.0)
            result["config"] = {"seed": seed, "attack": {"poison_rate": rate}, "paths": {"cache": f"/tmp/{seed}"}}
            if seed == 1:  # a key newer code added (only some cells have it) is not a difference
                result["config"]["train"] = {"eval_every": 1}
            atomic_write_json(root / f"r{rate}/cifar10/resnet18/badnets/rnp/seed{seed}/result.json", result)
    cells = collect(root)
    assert {c.row["setting"] for c in cells} == {"attack.poison_rate=0.05", "attack.poison_rate=0.1"}
    groups = group_cells(cells)
    assert sorted(groups) == [
        ("cifar10", "resnet18", "attack.poison_rate=0.05"),
        ("cifar10", "resnet18", "attack.poison_rate=0.1"),
    ]
    for (_, _, setting), g in groups.items():
        stat = g.stat("badnets", "rnp", "clean_acc")
        assert stat is not None and stat.n == 2
        assert stat.mean == pytest.approx(0.80 if setting.endswith("0.05") else 0.60)
    write_report(root, plots=False)
    md = (root / "results.md").read_text()
    assert (
        "## cifar10 / resnet18 (attack.poison_rate=0.05)" in md
        and "## cifar10 / resnet18 (attack.poison_rate=0.1)" in md
    )
    rows = list(csv.DictReader((root / "results.csv").open()))
    assert sorted(r["setting"] for r in rows) == ["attack.poison_rate=0.05"] * 2 + ["attack.poison_rate=0.1"] * 2
    summary = list(csv.DictReader((root / "summary.csv").open()))
    assert {r["setting"] for r in summary} == {"attack.poison_rate=0.05", "attack.poison_rate=0.1"}


def test_a_uniform_sweep_has_no_setting_column(sweep: Path) -> None:
    write_report(sweep, plots=False)
    header = (sweep / "results.csv").read_text().splitlines()[0].split(",")
    assert "setting" not in header and "## cifar10 / resnet18\n" in (sweep / "results.md").read_text()
