"""The grid projection: a preset's cells priced from a sweep's results.csv, with estimates and gaps listed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from studies.perf.project import Grid, from_perf, grid_of, main, measured, prepares, project

COLUMNS = [
    "dataset",
    "arch",
    "attack",
    "defense",
    "seed",
    "status",
    "seconds_cell",
    "train_seconds",
    "backdoor_seconds",
]


def row(attack: str, defense: str, seed: int, cell: float, train: float, prep: float = 0.0, **kw: str) -> dict:
    base = {"dataset": "cifar10", "arch": "resnet18", "status": "ok"}
    return {**base, "attack": attack, "defense": defense, "seed": str(seed), "seconds_cell": str(cell),
            "train_seconds": str(train), "backdoor_seconds": str(train + prep), **kw}  # fmt: skip


def test_the_paper_grid_is_read_from_its_preset() -> None:
    grid = grid_of("rnp_cifar10")
    assert (len(grid.attacks), len(grid.defenses), grid.seeds) == (13, 8, ("0", "1", "2"))
    assert grid.setting == ("cifar10", "resnet18") and grid.attacks[0] == "badnets" and "rnp" in grid.defenses


def test_measured_pairs_count_as_measured_the_rest_is_estimated_or_unpriced() -> None:
    rows = [
        row("badnets", "rnp", 0, 10.0, 100.0, prep=5.0),
        row("badnets", "rnp", 1, 14.0, 102.0, prep=5.0),
        row("badnets", "fp", 0, 30.0, 100.0, prep=5.0),  # the same model as the first row: counted once
        row("blend", "rnp", 0, 20.0, 90.0),
        row("blend", "fp", 0, 99.0, 90.0, status="failed"),  # a failed cell prices nothing
    ]
    m = measured(rows)
    assert m.models == {"badnets": 106.0, "blend": 90.0} and m.training == {"badnets": 101.0, "blend": 90.0}
    grid = Grid(("badnets", "blend", "wanet"), ("rnp", "fp", "anp"), ("0", "1"))
    p = project(grid, m)
    assert p.models_s == 2 * (106.0 + 90.0 + 95.5)  # wanet: the median training of the two measured attacks
    assert p.cells_s["rnp"] == 2 * (12.0 + 20.0 + 16.0)  # wanet/rnp at the median of rnp's measured pairs
    assert p.cells_s["fp"] == 2 * (30.0 + 30.0 + 30.0) and p.cells_s["anp"] == 0.0
    assert p.unpriced == ["anp: never measured"]
    assert any(e.startswith("model wanet") for e in p.estimated) and any(
        e.startswith("fp: 2 of 3") for e in p.estimated
    )
    assert p.total_s == p.models_s + sum(p.cells_s.values())


def test_another_setting_is_refused_unless_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with (tmp_path / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerow(row("badnets", "rnp", 0, 10.0, 60.0, dataset="embedded", arch="convnet"))
    assert main([str(tmp_path), "--seeds", "0"]) == 2
    assert "measured embedded/convnet, not rnp_cifar10's cifar10/resnet18" in capsys.readouterr().out
    assert main([str(tmp_path), "--seeds", "0", "--as-measured"]) == 0
    out = capsys.readouterr().out
    assert "13 attacks x 8 defenses x 1 seeds = 104 cells" in out and "AT THE SPEED OF embedded/convnet" in out
    assert "anp: never measured" in out and "lower bound" in out
    assert main([str(tmp_path / "missing")]) == 2


def test_a_perf_run_prices_the_grid_and_lists_attack_preparation_as_unpriced() -> None:
    grid = Grid(("badnets", "trojan", "none"), ("none", "rnp", "anp", "fp", "nad"), ("0", "1"))
    figures = {
        "train": {"images_per_s": 1000.0},
        "eval": {"images_per_s": 2000.0},
        "rnp": {"seconds": 3.0},
        "anp": {"seconds": 10.0},
        "defenses": {"fp": {"seconds": 6.0}},
    }
    p = from_perf(grid, figures, epochs=2, train_images=500, eval_images=1000)
    assert p.models_s == 6 * 2 * 500 / 1000.0  # 3 attacks x 2 seeds, each 2 epochs of 500 images
    evaluation = 2 * 1000 / 2000.0  # before and after
    assert p.cells_s == {"none": 6 * evaluation, "rnp": 6 * (3.0 + evaluation), "anp": 6 * (10.0 + evaluation),
                         "fp": 6 * (6.0 + evaluation)}  # fmt: skip
    assert p.unpriced == [
        "nad: not measured by the perf run",
        "attack preparation (trojan): not measured by the perf run",
    ]


def test_which_attacks_prepare_is_read_from_their_classes() -> None:
    assert [a for a in grid_of("rnp_cifar10").attacks if prepares(a)] == [
        "trojan",
        "cl",
        "dynamic",
        "fc",
        "awp",
        "lira",
    ]
