"""Stability scores: the fraction of a defense's knob grid that removes the backdoor within the cost bound."""

from __future__ import annotations

from benchmark.report.stability import stabilities, stability_markdown
from benchmark.report.table import Cell


def _cell(defense: str, knobs: dict, asr: float, ca_change: float, seed: int = 0) -> Cell:
    row = {"dataset": "d", "arch": "a", "attack": "badnets", "defense": defense, "seed": seed, "status": "ok"}
    config = {"defense": {"name": defense, "batch_size": 128, **knobs}, "seed": seed}
    return Cell({**row, "after_asr": asr, "ca_change": ca_change}, config=config)


def test_score_counts_cells_within_both_bounds_and_knobs_are_the_varying_defense_settings() -> None:
    cells = [
        _cell("rnp", {"unlearn_lr": 0.001, "clean_threshold": 0.2}, asr=0.05, ca_change=-0.01),  # passes
        _cell("rnp", {"unlearn_lr": 0.01, "clean_threshold": 0.2}, asr=0.95, ca_change=0.0),  # ASR too high
        _cell("rnp", {"unlearn_lr": 0.001, "clean_threshold": 0.3}, asr=0.02, ca_change=-0.20),  # costs too much
        _cell("rnp", {"unlearn_lr": 0.01, "clean_threshold": 0.3}, asr=0.10, ca_change=-0.03),  # at both bounds
        _cell("rnp", {"unlearn_lr": 0.01, "clean_threshold": 0.3}, asr=0.5, ca_change=0.0, seed=1),  # other seed
        _cell("ft", {"lr": 0.01}, asr=0.0, ca_change=0.0),  # one setting only: no grid, no score
    ]
    (s,) = stabilities(cells)
    assert (s.defense, s.knobs) == ("rnp", ("defense.unlearn_lr", "defense.clean_threshold"))
    assert (s.cells, s.passed, s.score) == (5, 2, 0.4)
    assert s.axis(0) == ["0.001", "0.01"] and len(s.points) == 4
    (strict,) = stabilities(cells, max_asr=0.01, max_ca_cost=0.5)
    assert strict.passed == 0
    md = stability_markdown([s], {}, 0.1, 0.03)
    knobs = "`defense.unlearn_lr` 0.001, 0.01; `defense.clean_threshold` 0.2, 0.3"
    assert f"| d / a / badnets | rnp | {knobs} | 5 | 2 | 0.40 | – |" in md
    assert stability_markdown([], {}, 0.1, 0.03) == ""
