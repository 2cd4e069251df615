"""NAD and I-BAU at the smallest CPU scale where their collapse showed (slow): it must not come back.

On a paper-sized ResNet-18 on a GPU the authors' learning rates made NAD and I-BAU lose much of the clean
accuracy; with BackdoorBench's (the defaults) they keep it. The same collapse shows on the CPU, fp32, seed 0:
- NAD on the quickstart model (convnet width 64, embedded data) at the authors' lr 0.1 opening, against
  lr 0.01 (default);
- I-BAU on a width-16 ResNet-18 trained on the embedded data (the quickstart's recipe) at the authors'
  lr 1e-3, against lr 1e-4 (default).
Each bound sits between the default's cost and the authors' lr's, with a margin for another CPU's arithmetic
(figures: docs/results.md, docs/gpu.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_composed_cell

NAD_MAX_CA_COST = 0.10  # between the default's cost and the authors' lr's (docs/results.md)
IBAU_MAX_CA_COST = 0.07  # likewise
RESNET18_W16 = ["arch=resnet18", "+arch.kwargs.width=16"]  # the quickstart preset keeps its stem in quickstart_convnet


def _cost(result: dict) -> float:
    assert result["before"]["asr"] >= 0.95, result["before"]  # the backdoor took: the defense has work to do
    return result["before"]["clean_acc"] - result["after"]["clean_acc"]


@pytest.mark.slow
def test_nad_keeps_clean_accuracy_on_the_quickstart_model(tmp_home: Path) -> None:
    """About 3 minutes on 2 cores: the quickstart's backdoored convnet, then NAD at its defaults."""
    result = run_composed_cell(["experiment=quickstart", "defense=nad"], tmp_home / "nad")
    assert _cost(result) <= NAD_MAX_CA_COST, (result["before"], result["after"])


@pytest.mark.slow
def test_ibau_keeps_clean_accuracy_on_a_resnet18(tmp_home: Path) -> None:
    """About 20 minutes on 2 shared cores: a width-16 ResNet-18 on the embedded data, then I-BAU at its defaults."""
    result = run_composed_cell(["experiment=quickstart", *RESNET18_W16, "defense=ibau"], tmp_home / "ibau")
    assert _cost(result) <= IBAU_MAX_CA_COST, (result["before"], result["after"])
    assert result["defense_info"]["rounds"] == 5
