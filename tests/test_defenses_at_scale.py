"""NAD and I-BAU at the smallest CPU scale where their collapse showed (slow): it must not come back.

On a paper-sized ResNet-18 on one H200 (docs/gpu.md), the authors' learning rates made NAD fall 0.941 -> 0.459
and I-BAU 0.941 -> 0.103 in clean accuracy; with BackdoorBench's (the defaults now) they kept 0.912 and 0.908.
The same collapse shows on the CPU, measured on a shared 2-core AMD EPYC, fp32, seed 0:
- NAD on the quickstart model (convnet width 64, embedded data, 0.878 before): the authors' lr 0.1 opening
  ended at 0.666; lr 0.01 (default) at 0.840.
- I-BAU on a width-16 ResNet-18 trained on the embedded data (the quickstart's recipe, 0.891 before): the
  authors' lr 1e-3 ended at 0.778 (outer loss 4.2 in the first round); lr 1e-4 (default) at 0.864.
The bounds sit between the two with a margin for another CPU's arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_composed_cell

NAD_MAX_CA_COST = 0.10  # default 0.038 measured; the authors' lr 0.21
IBAU_MAX_CA_COST = 0.07  # default 0.027 measured; the authors' lr 0.113
RESNET18_W16 = ["arch=resnet18", "arch.kwargs.width=16", "~arch.kwargs.stem_stride"]


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
