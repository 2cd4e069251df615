"""A quickstart-like debug sweep: every defense's result.json carries its diagnostics, a premise verdict made
from them, and the implant check (issue 24, issue 26 point 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmark.core.premise import premise_verdict
from tests.conftest import group_options, run_composed_cell

DEFENSES = group_options("defense")


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One benchmark home for the module: the defenses share one cached debug model, as a sweep's cells do."""
    home = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHMARK_HOME", str(home))
        mp.setenv("WANDB_MODE", "disabled")
        yield home


@pytest.mark.parametrize("name", DEFENSES)
def test_every_defense_records_diagnostics_and_a_premise(name: str, shared_home: Path) -> None:
    result = run_composed_cell(["experiment=quickstart", "debug=default", f"defense={name}"], shared_home / name)
    written = json.loads((shared_home / name / "result.json").read_text())
    diagnostics = written["defense_info"]["diagnostics"]
    assert written["premise"] == result["premise"] == premise_verdict(name, diagnostics)
    assert written["premise"] == "held" or written["premise"].startswith("failed: ") or name == "none"
    assert (written["premise"] == "n/a") == (name == "none")
    implant = written["implant"]
    assert implant["bar"] == 0.5 and implant["asr_before"] == written["before"]["asr"]
    assert implant["held"] == (written["before"]["asr"] >= 0.5)
    expected = {
        "rnp": {"unlearn_acc_per_epoch", "recover_acc_per_epoch", "recovery_left_chance", "mask_histogram"},
        "anp": {"mask_histogram", "masks_at_0", "masks_at_1", "pruned", "total_channels"},
        "fp": {"pruned_fraction", "acc_per_epoch"},
        "ft": {"acc_per_epoch"},
        "nad": {"acc_per_epoch", "teacher_acc_per_epoch"},
        "ibau": {"acc_start", "acc_per_epoch"},
        "clp": {"u", "pruned", "total_channels"},
        "none": set(),
    }[name]
    assert expected <= set(diagnostics), diagnostics
    if name in ("rnp", "anp"):
        assert sum(diagnostics["mask_histogram"]["counts"]) == diagnostics["total_channels"]


def test_a_backdoor_that_did_not_implant_is_flagged(shared_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A bar above any reachable ASR: the cell says the backdoor did not implant, in result.json and the log."""
    overrides = ["experiment=quickstart", "debug=default", "defense=none", "eval.implant_bar=1.0"]
    with caplog.at_level("WARNING"):
        result = run_composed_cell(overrides, shared_home / "not-implanted")
    assert result["implant"] == {"asr_before": result["before"]["asr"], "bar": 1.0, "held": False}
    assert "the backdoor did not implant" in caplog.text
