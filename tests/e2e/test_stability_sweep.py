"""`python -m benchmark -m experiment=stability debug=default`: a real knob sweep, its score and its heat-map."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.helpers.cli import run_cli


def test_stability_sweep_scores_each_defense_and_draws_its_heat_map(tmp_path: Path) -> None:
    """A 2 x 2 RNP grid (restricted from the command line) writes four cells, one per knob setting, and the
    report's stability table with the score and the heat-map; a bound no cell can meet scores 0."""
    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=stability", "debug=default", f"hydra.sweep.dir={sweep}"]
    knobs = ["defense.unlearn_lr=0.001,0.01", "defense.clean_threshold=0.2,0.3"]
    done = run_cli([*args, *knobs, "hydra.callbacks.report.stability_max_asr=0.0"], tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = sorted(sweep.glob("*/embedded/convnet/badnets/rnp/seed0/result.json"))
    assert [p.relative_to(sweep).parts[0] for p in results] == [
        f"defense.unlearn_lr={lr},defense.clean_threshold={t}" for lr in ("0.001", "0.01") for t in ("0.2", "0.3")
    ]
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    passing = sum(float(r["after_asr"]) <= 0.0 and float(r["ca_change"]) >= -0.03 for r in rows)
    md = (sweep / "results.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| embedded / convnet / badnets | rnp |"))
    assert f"| 4 | {passing} | {passing / 4:.2f} |" in line
    assert "`defense.unlearn_lr` 0.001, 0.01; `defense.clean_threshold` 0.2, 0.3" in line
    assert "ASR <= 0%" in md
    sections = [x for x in md.splitlines() if x.startswith("## ")]
    assert sections[0] == "## Hyper-parameter stability" and len(sections) == 5  # the table first, then 4 settings
    name = "plots/stability_embedded_convnet_badnets_rnp.png"
    assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and name in line
