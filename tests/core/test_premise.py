"""The premise rules on crafted diagnostics: each says `held` where the mechanism worked and names the failure."""

from __future__ import annotations

import math

import pytest

from benchmark.core.premise import (
    IMPLANT_BAR,
    chance_bar,
    implant_check,
    premise_verdict,
)

BAR = chance_bar(10)


def rnp(**changes) -> dict:
    d = {
        "num_classes": 10,
        "unlearn_epochs": 3,
        "unlearn_reached_threshold": True,
        "unlearn_acc_per_epoch": [0.8, 0.4, 0.15],
        "recover_acc_per_epoch": [0.198, 0.4, 0.652],  # the authors' CIFAR-10 log climbs like this
        "chance_bar": BAR,
        "recovery_left_chance": True,
        "pruned": 12,
        "total_channels": 4800,
    }
    return {**d, **changes}


def test_chance_bar_is_chance_plus_ten_points() -> None:
    assert pytest.approx(0.2) == BAR and chance_bar(100) == pytest.approx(0.11)


def test_rnp_holds_when_recovery_climbs() -> None:
    assert premise_verdict("rnp", rnp()) == "held"


def test_rnp_fails_when_recovery_stays_at_chance() -> None:
    # issue 24's Fashion-MNIST ResNet-18: recovery at 0.118 for all 20 epochs
    verdict = premise_verdict("rnp", rnp(recover_acc_per_epoch=[0.118] * 20, recovery_left_chance=False))
    assert verdict.startswith("failed: mask recovery stayed at chance") and "0.118" in verdict


def test_rnp_fails_when_unlearning_never_reaches_its_threshold() -> None:
    verdict = premise_verdict("rnp", rnp(unlearn_reached_threshold=False, unlearn_acc_per_epoch=[0.9, 0.85]))
    assert verdict.startswith("failed: unlearning never reached") and "0.850" in verdict


def test_rnp_fails_when_nothing_is_pruned() -> None:
    assert premise_verdict("rnp", rnp(pruned=0)) == "failed: no mask fell to the threshold: nothing pruned"


@pytest.mark.parametrize(
    ("pruned", "verdict"),
    [(10, "held"), (0, "failed: no mask fell"), (3000, "failed: 3000 of 4800 channels pruned")],
)
def test_anp_needs_a_few_masks_at_the_threshold(pruned: int, verdict: str) -> None:
    d = {"pruned": pruned, "total_channels": 4800, "masks_at_0": pruned, "masks_at_1": 4000}
    assert premise_verdict("anp", d).startswith(verdict)


def test_fp_fails_when_nothing_could_be_pruned_or_fine_tuning_collapsed() -> None:
    good = {"pruned": 5, "total_channels": 64, "pruned_fraction": 0.078, "acc_per_epoch": [0.8, 0.9], "chance_bar": BAR}
    assert premise_verdict("fp", good) == "held"
    assert premise_verdict("fp", {**good, "pruned": 0}).startswith("failed: held-out accuracy fell past the bound")
    assert premise_verdict("fp", {**good, "acc_per_epoch": [0.5, 0.1]}).startswith("failed: defense-data accuracy")


@pytest.mark.parametrize("defense", ["ft", "nad"])
def test_fine_tuning_defenses_fail_when_the_defense_data_accuracy_falls_to_chance(defense: str) -> None:
    d = {"acc_per_epoch": [0.7, 0.9], "teacher_acc_per_epoch": [0.8, 0.9], "chance_bar": BAR}
    assert premise_verdict(defense, d) == "held"
    assert premise_verdict(defense, {**d, "acc_per_epoch": [0.3, 0.12]}) == (
        "failed: defense-data accuracy fell to chance (0.120 <= 0.2)"
    )


def test_nad_fails_when_its_teacher_collapsed() -> None:
    d = {"acc_per_epoch": [0.9], "teacher_acc_per_epoch": [0.1], "chance_bar": BAR}
    assert premise_verdict("nad", d).startswith("failed: teacher's defense-data accuracy fell to chance")


def test_ibau_fails_when_unlearning_breaks_the_model() -> None:
    d = {"acc_start": 0.9, "acc_per_epoch": [0.88, 0.85], "chance_bar": BAR}
    assert premise_verdict("ibau", d) == "held"
    assert premise_verdict("ibau", {**d, "acc_per_epoch": [0.7, 0.6]}) == (
        "failed: defense-data accuracy fell from 0.900 to 0.600 (> 0.20)"
    )
    assert premise_verdict("ibau", {**d, "acc_per_epoch": [0.1]}).startswith("failed: defense-data accuracy fell to")


def test_clp_fails_without_outlier_channels() -> None:
    d = {"u": 3.0, "pruned": 0, "total_channels": 4800, "pruned_fraction": 0.0}
    assert premise_verdict("clp", d) == "failed: no channel's Lipschitz bound exceeded mean + 3.0 std: nothing pruned"
    assert premise_verdict("clp", {**d, "pruned": 40}) == "held"


def test_no_defense_unknown_defense_or_no_diagnostics_is_not_applicable() -> None:
    assert premise_verdict("none", {}) == "n/a"
    assert premise_verdict("someone_elses", {"pruned": 0}) == "n/a"
    assert premise_verdict("rnp", None) == "n/a"


def test_implant_check_against_the_bar() -> None:
    assert IMPLANT_BAR == 0.5
    assert implant_check(0.096) == {"asr_before": 0.096, "bar": 0.5, "held": False}
    assert implant_check(0.617)["held"] and not implant_check(0.7, bar=0.8)["held"]
    assert not implant_check(math.nan)["held"]
