"""Slow: every attack with an implant bar in the budget table plants its backdoor through the real pipeline.

One test for all attacks, driven by tests/helpers/budgets.py: a `debug=implant` cell (the quickstart's data
and net, no defense) plus the row's `implant` overrides must reach the row's `min_asr` with a working
classifier, and a second cell must get the same model back from the cache with its trigger restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_composed_cell
from tests.helpers.budgets import BUDGETS

ROWS = {name: budget for name, budget in BUDGETS["attack"].items() if budget.min_asr is not None}


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One benchmark home for the module: the clean-model attacks share one cached clean model."""
    home = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHMARK_HOME", str(home))
        mp.setenv("WANDB_MODE", "disabled")
        yield home


def test_every_attack_but_the_clean_model_has_an_implant_bar() -> None:
    assert set(BUDGETS["attack"]) - set(ROWS) == {"none"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ROWS))
def test_attack_implants_a_backdoor(name: str, shared_home: Path) -> None:
    budget = ROWS[name]
    overrides = ["debug=implant", f"attack={name}", *budget.implant]
    result = run_composed_cell(overrides, shared_home / name)
    before = result["before"]
    print(f"{name}: clean acc {before['clean_acc']:.3f}  ASR {before['asr']:.3f}")
    assert result["model_source"] == "trained"
    assert before["asr"] > budget.min_asr and before["clean_acc"] > 0.6, before  # chance ASR is about 0.1
    again = run_composed_cell(overrides, shared_home / f"{name}-again")  # a fresh attack object
    assert again["model_source"] == "cache" and again["before"] == before, "the trigger did not come back"
