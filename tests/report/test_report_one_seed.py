"""The report of a one-seed sweep shows what applies: no interval table, no published rows for another dataset,
no DER for defense=none, rounded values, every defense's curve plotted, compact cell details."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmark.core.evaluate import Metrics
from benchmark.core.io import atomic_write_json
from benchmark.report.html import compact
from benchmark.report.plots import label_offset, point_labels
from benchmark.report.published import load_registry
from benchmark.report.sections import interval_section, published_section
from benchmark.report.table import collect, group_cells
from benchmark.report.write import write_report
from benchmark.run.record import assemble_result

NOISY = 0.8805000185966492  # float32 0.8805 read as a float64


def result(attack: str, defense: str, seed: int, dataset: str, curve: list[dict[str, Any]]) -> dict[str, Any]:
    config = {"dataset": {"name": dataset}, "arch": {"name": "resnet18"}, "attack": {"name": attack},
              "defense": {"name": defense}, "seed": seed}  # fmt: skip
    return {
        "schema": 1,
        "cell": {"attack": attack, "dataset": dataset, "arch": "resnet18", "defense": defense, "seed": seed},
        "model_source": "cache",
        "before": {"clean_acc": 0.9, "asr": 1.0, "robust_acc": 0.0},
        "after": {"clean_acc": NOISY, "asr": 0.1, "robust_acc": 0.8},
        "der": 0.5,
        "defense_info": {"curve": curve, "score": NOISY, "nested": {"lr": 0.1, "steps": 3}},
        "timing_s": {"defense": 1.0, "total": 2.0},
        "config": config,
    }


def fp_curve() -> list[dict[str, Any]]:
    return [{"fraction": f, "pruned": int(10 * f), "clean_acc": 0.9 - f / 10, "asr": 1 - f, "robust_acc": f}
            for f in (0.0, 0.5, 0.9)]  # fmt: skip


def one_seed(tmp_path: Path, dataset: str) -> Path:
    root = tmp_path / "sweep"
    for defense in ("fp", "none", "rnp"):
        curve = fp_curve() if defense == "fp" else []
        atomic_write_json(root / f"{dataset}/resnet18/badnets/{defense}/seed0/result.json",
                          result("badnets", defense, 0, dataset, curve))  # fmt: skip
    return root


def test_one_seed_has_no_interval_table_and_two_seeds_do(tmp_path: Path) -> None:
    root = one_seed(tmp_path, "embedded")
    (g,) = group_cells(collect(root)).values()
    assert interval_section(g) is None
    atomic_write_json(root / "embedded/resnet18/badnets/rnp/seed1/result.json",
                      result("badnets", "rnp", 1, "embedded", []))  # fmt: skip
    (g,) = group_cells(collect(root)).values()
    assert interval_section(g) is not None


def test_published_rows_only_for_their_dataset_and_arch(tmp_path: Path) -> None:
    entries = load_registry()
    (embedded,) = group_cells(collect(one_seed(tmp_path / "a", "embedded"))).values()
    assert published_section(embedded, entries) is None
    cifar_root = tmp_path / "b" / "sweep"
    atomic_write_json(cifar_root / "cifar10/resnet18/badnets/rnp/seed0/result.json",
                      result("badnets", "rnp", 0, "cifar10", []))  # fmt: skip
    (cifar,) = group_cells(collect(cifar_root)).values()
    section = published_section(cifar, entries)
    assert section is not None and section.rows


def test_no_defense_has_no_der_and_shown_values_are_rounded(tmp_path: Path) -> None:
    root = one_seed(tmp_path, "embedded")
    report = write_report(root)
    rows = {c.row["defense"]: c.row for c in report.cells}
    assert rows["none"]["der"] is None and rows["rnp"]["der"] == 0.5
    md = (root / "results.md").read_text()
    html = (root / "report.html").read_text()
    assert "0.8805000185966492" not in md and "0.8805000185966492" not in html
    assert "n=1" not in md
    assert "95% intervals" not in md
    plots = {p.name for p in report.files if p.suffix == ".png"}
    assert any(name.startswith("curve_") and "fp" in name for name in plots), plots  # FP's curve is plotted


def test_cell_details_are_a_compact_table() -> None:
    rows = compact({"pruned": [1, 2], "nested": {"lr": 0.1, "deep": {"x": NOISY}}, "note": None})
    assert rows == [("pruned", "[1, 2]"), ("nested", "lr=0.1, deep.x=0.8805"), ("note", "null")]


def test_record_rounds_float32_noise() -> None:
    m = Metrics(NOISY, 0.10000000149011612, 0.0)
    out = assemble_result({"defense": "rnp"}, ("trained", {}), m, m, {}, [], {}, {}, {})
    assert out["before"]["clean_acc"] == 0.8805 and out["after"]["asr"] == 0.1
    assert json.dumps(out["der"]) == "0.5"


@pytest.mark.parametrize(("attacks", "points", "shown"), [(1, 1, False), (3, 3, True), (6, 6, False)])
def test_scatter_labels_only_when_they_tell_something(attacks: int, points: int, shown: bool) -> None:
    assert point_labels(attacks, points) is shown


def test_scatter_label_spots_differ_between_series() -> None:
    assert len({label_offset(i) for i in range(6)}) == 6
