"""Precision parity: bf16 autocast reaches the outcome fp32 reaches, in backdoor training and in every defense.

Each comparison runs the same loop twice from the same weights, data and generator seed, once with
`Precision("fp32")` and once with `Precision("bf16")` (autocast on the CPU too), so the arithmetic is the only
difference. Both results are scored by the same fp32 evaluation, so a gap belongs to the loop under test;
the evaluation's own parity has a test of its own.

Tolerances. The scores are fractions of all 2,000 embedded test images (clean accuracy) and of their 1,800
triggered non-target ones (ASR); the session fixture's 600 would make every standard error 1.8x larger.
- One score's binomial standard error sqrt(p(1-p)/n) is at most 0.011 for clean accuracy (p 0.4-0.8) and
  0.012 for ASR (worst case p = 0.5).
- Both arms are scored on the same images, so their difference is paired, with standard error sqrt(d/n), d
  the share of images on which the two models disagree: small after training, FT, FP and I-BAU, larger after
  ANP, RNP or NAD, whose pruning or distillation flips more predictions (SE at most about 0.013).
- fp32 against itself with another generator seed (the noise of any rerun) moves both scores by as much as the
  tolerances below, or more.
CLEAN_TOL = 0.02 is a few paired standard errors and within fp32's own seed-to-seed spread; ASR_TOL = 0.05 is
4 standard errors of one ASR at its noisiest. The gaps seen stay well inside both on CPUs with and without
native bf16, but for ANP at its efficacy budget, which does not hold parity reliably: its outcome hangs on
which channels land among the 20 lowest masks, and bf16 swaps a few (a marked row, KNOWN_GAPS), while fp32
alone moves clean accuracy more than that between seeds. Figures: docs/results.md.

On a CPU without bf16 units (AVX2 only; `benchmark.core.precision.cpu_has_bf16_units`) autocast is emulated
and the bf16 arm costs about 5x the fp32 one, so the fast rows are shorter than tests/helpers/budgets.py's efficacy
settings, and those run in the slow suite with backdoor training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from attacks.badnets import BadNets
from attacks.poison import poison_train, triggered_test
from benchmark.core.archs import build_classifier
from benchmark.core.augment import AugmentSpec
from benchmark.core.data import ImageSet, TriggeredSet
from benchmark.core.evaluate import Metrics, evaluate, predict
from benchmark.core.precision import Precision
from benchmark.core.training import TrainRecipe, train_classifier
from benchmark.run.config import build_run_config
from benchmark.sources import load_dataset
from defenses.base import DefenseData
from tests.conftest import compose_cfg, group_options
from tests.helpers.budgets import BUDGETS

FP32, BF16 = Precision("fp32"), Precision("bf16")
CLEAN_TOL = 0.02  # see the module docstring
ASR_TOL = 0.05
MOVED = 0.05  # a fast row's fp32 run must move clean acc + ASR by this much: a defense that did nothing proves nothing
DEFENSES = group_options("defense")

# Fast rows: fewer iterations than the efficacy budget, each still moving the fp32 outcome by MOVED or more
# (how far each moves the fixture's model: docs/results.md).
FAST: dict[str, tuple[str, ...]] = {
    "none": (),
    "clp": (),  # data-free, all fp32: precision-independent by construction (the row keeps it so)
    "ft": ("defense.epochs=3",),  # of 100
    "fp": ("defense.epochs=1",),  # pruning (fp32) + one fine-tuning epoch
    "nad": ("defense.teacher_epochs=1", "defense.epochs=1"),
    "anp": ("defense.iterations=10", "defense.selection=count", "defense.prune_count=20"),
    "rnp": (  # unlearning stops short of 0.2 and masks barely recover: the 20 lowest are pruned
        "defense.unlearn_epochs=2",
        "defense.recover_epochs=2",
        "defense.selection=count",
        "defense.prune_count=20",
    ),
    "ibau": ("defense.n_rounds=1", "defense.K=1"),  # the hypergradient runs in fp32 anyway
}

# Rows whose parity fails where the suite runs (name, speed, generator seed), each with why: marked, not
# hidden by a wider bound. A mark that starts passing (XPASS) fails the suite: drop it then.
KNOWN_GAPS: dict[tuple[str, str, int], str] = {
    ("anp", "slow", 2): (
        "ANP (100 iterations, 20 lowest masks pruned), seed 2: bf16 prunes other channels among the 20 and the "
        "ASR moves by more than 0.05 (AVX2 CPU: 0.184 against fp32's 0.108; the Xeon, streams v2: 0.103 against "
        "0.157); seeds 0 and 1 hold outcome parity (docs/results.md)"
    ),
}
PRUNING = ("anp", "clp", "fp", "rnp")  # the defenses that record `pruned_channels`
# Rows whose outcome holds parity but whose pruned channels differ by more than a quarter, each with why.
KNOWN_PRUNING_GAPS: dict[tuple[str, str, int], str] = {
    ("anp", "slow", 0): (
        "ANP (100 iterations, 20 lowest masks pruned), seed 0, random streams v2, on the AMX Xeon: bf16 learns other "
        "masks, not just other roundings at the cut: 6 of the 23 channels pruned in either precision differ, "
        "among them fp32's 6th-lowest mask (0.20 of a 0.06-0.53 range); clean acc 0.501 / 0.498 and ASR 0.024 / "
        "0.007 agree (docs/results.md)"
    ),
}


@pytest.fixture(scope="module")
def full_test() -> tuple[ImageSet, TriggeredSet]:
    """All 2,000 embedded test images and their 1,800 triggered non-target ones (BadNets, as the fixture)."""
    _, test = load_dataset("embedded", Path("/nonexistent"), False)
    return test, triggered_test(test, BadNets(), 10)


def score(model: nn.Module, full_test: tuple[ImageSet, TriggeredSet]) -> Metrics:
    return evaluate(model, *full_test, precision=FP32)


@pytest.fixture(scope="module")
def before(backdoored, full_test) -> Metrics:
    """The session's backdoored model (tests/conftest.py, fp32) on the full test set: every defense starts there."""
    return score(backdoored[0], full_test)


def assert_parity(fp32: Metrics, bf16: Metrics, what: str) -> None:
    assert abs(fp32.clean_acc - bf16.clean_acc) <= CLEAN_TOL, f"{what}: clean acc fp32 {fp32} vs bf16 {bf16}"
    assert abs(fp32.asr - bf16.asr) <= ASR_TOL, f"{what}: ASR fp32 {fp32} vs bf16 {bf16}"


def make_defense(name: str, overrides: tuple[str, ...]) -> Any:
    """The defense as the YAML defines it (read now: defaults change), shrunk only by `overrides`."""
    return build_run_config(compose_cfg([f"defense={name}", "experiment=quickstart", *overrides])).defense


def rows(gaps: dict[tuple[str, str, int], str], names: tuple[str, ...] | None = None) -> list:
    """(name, speed, seed) for every defense in `names`: a fast row, a slow one at its efficacy budget, the
    known `gaps` (marked strict xfail, each with why)."""
    keys = []
    for name in names or DEFENSES:
        speeds = ("fast", "slow") if BUDGETS["defense"][name].efficacy != FAST.get(name) else ("fast",)
        keys += [(name, speed, 0) for speed in speeds]
    keys += [key for key in gaps if key not in keys]
    params = []
    for name, speed, seed in keys:
        marks = [pytest.mark.slow] if speed == "slow" else []
        if (name, speed, seed) in gaps:
            marks.append(pytest.mark.xfail(strict=True, reason=gaps[name, speed, seed]))
        ident = f"{name}-{speed}" + (f"-seed{seed}" if seed else "")
        params.append(pytest.param(name, speed, seed, marks=marks, id=ident))
    return params


def test_every_defense_has_a_fast_parity_row() -> None:
    assert set(FAST) == set(DEFENSES), f"add rows to FAST for {sorted(set(DEFENSES) - set(FAST))}"


_RUNS: dict[tuple[str, str, int], dict[str, tuple[Metrics, dict[str, Any]]]] = {}  # one pair of runs per row


def run_both(name: str, speed: str, seed: int, model: nn.Module, embedded, full_test) -> tuple[tuple, tuple]:
    """The defense in fp32 and in bf16 from the same model, data and generator seed: (metrics, info) each.

    Kept per row, so that the outcome test and the pruned-channel test of a row share one pair of runs."""
    key = (name, speed, seed)
    if key not in _RUNS:
        overrides = FAST[name] if speed == "fast" else BUDGETS["defense"][name].efficacy
        _RUNS[key] = {}
        for precision in (FP32, BF16):
            data = DefenseData(embedded.reserve, AugmentSpec(crop_pad=2), 10, precision)
            out = make_defense(name, overrides)(model, data, torch.Generator().manual_seed(seed))
            _RUNS[key][precision.name] = (score(out.model, full_test), out.info)
    return _RUNS[key]["fp32"], _RUNS[key]["bf16"]


@pytest.mark.parametrize(("name", "speed", "seed"), rows(KNOWN_GAPS))
def test_defense_reaches_the_same_outcome_in_bf16(
    name: str, speed: str, seed: int, backdoored, before: Metrics, embedded, full_test, tmp_home
) -> None:
    """Slow rows run the efficacy budget (fp32 must remove the backdoor there); fast rows a shorter run."""
    (fp32, info32), (bf16, info16) = run_both(name, speed, seed, backdoored[0], embedded, full_test)
    overrides = FAST[name] if speed == "fast" else BUDGETS["defense"][name].efficacy
    what = f"{name} {' '.join(overrides)} seed {seed} (before {before})"
    print(f"{what}: fp32 {fp32} bf16 {bf16} pruned {info32.get('pruned')} / {info16.get('pruned')}")
    if name != "none":  # the outcomes compared must be a defense's work, not the input model twice
        moved = abs(fp32.clean_acc - before.clean_acc) + abs(fp32.asr - before.asr)
        removed = fp32.asr < before.asr - 0.3  # the efficacy budget's bar (tests/methods/test_defenses.py)
        assert moved >= MOVED and (speed == "fast" or removed), f"{what}: fp32 did not do its work: {fp32}"
    assert_parity(fp32, bf16, what)


@pytest.mark.parametrize(("name", "speed", "seed"), rows(KNOWN_PRUNING_GAPS, PRUNING))
def test_a_pruning_defense_prunes_mostly_the_same_channels_in_bf16(
    name: str, speed: str, seed: int, backdoored, embedded, full_test, tmp_home
) -> None:
    """Loosely: a mask or activation near the cut may tip either way, so at most a quarter of the channels
    pruned in either precision may differ."""
    (_, info32), (_, info16) = run_both(name, speed, seed, backdoored[0], embedded, full_test)
    pruned32, pruned16 = pruned_set(info32), pruned_set(info16)
    assert len(pruned32 ^ pruned16) <= max(2, len(pruned32 | pruned16) // 4), (
        f"fp32 {info32['pruned_channels']} bf16 {info16['pruned_channels']}"
    )


def pruned_set(info: dict[str, Any]) -> set[str]:
    """The channels a pruning defense removed: (layer, channel) rows (RNP, ANP, CLP) or head inputs (FP)."""
    return {f"{r['layer']}:{r['channel']}" if isinstance(r, dict) else str(r) for r in info["pruned_channels"]}


def metrics_of(pred: torch.Tensor, full_test: tuple[ImageSet, TriggeredSet]) -> Metrics:
    """`evaluate`'s scores from predictions on the clean images followed by the triggered ones."""
    test, triggered = full_test
    clean, trig = pred[: len(test)], pred[len(test) :]

    def rate(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a == b).float().mean().item()

    return Metrics(rate(clean, test.y), rate(trig, triggered.images.y), rate(trig, triggered.true_y))


def test_evaluation_in_bf16_matches_fp32(backdoored, full_test) -> None:
    """The same model scored under bf16 autocast: predictions flip only where logits nearly tie."""
    model = backdoored[0]
    x = torch.cat([full_test[0].x, full_test[1].images.x])  # one pass over both sets per precision
    fp32_pred, bf16_pred = predict(model, x, precision=FP32), predict(model, x, precision=BF16)
    fp32, bf16 = metrics_of(fp32_pred, full_test), metrics_of(bf16_pred, full_test)
    differ = (fp32_pred != bf16_pred).float().mean().item()
    print(f"evaluation: fp32 {fp32} bf16 {bf16}, {differ:.4f} of the predictions differ")
    assert_parity(fp32, bf16, "evaluation")
    assert differ <= 0.01, f"{differ:.4f} of the predictions differ"


# Backdoor training: the fixture's recipe (3 epochs) plants a barely-learned backdoor whose ASR is no stable
# outcome: it swings with the batch order and the CPU. Parity is judged after 5 epochs, where the backdoor has
# taken fully and clean accuracy agrees across batch orders, in fp32 and bf16 alike (docs/results.md).
# Slow: ~80 s with emulated bf16.
TRAIN_RECIPE = TrainRecipe(epochs=5, batch_size=128, lr=0.05, warmup_epochs=0.5)


def train_backdoored(train: ImageSet, precision: Precision) -> nn.Module:
    """The session fixture's model and data (tests/conftest.py), trained for TRAIN_RECIPE's epochs."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    poisoned, _ = poison_train(train, BadNets(), 10, gen)
    model = build_classifier("convnet", 10, 1, [0.286], [0.353], width=16)
    train_classifier(model, poisoned, TRAIN_RECIPE, AugmentSpec(crop_pad=2, flip=False), gen, precision=precision)
    return model


@pytest.mark.slow
def test_backdoor_training_reaches_the_same_outcome_in_bf16(embedded, full_test) -> None:
    fp32 = score(train_backdoored(embedded.train, FP32), full_test)
    bf16 = score(train_backdoored(embedded.train, BF16), full_test)
    print(f"backdoor training: fp32 {fp32} bf16 {bf16}")
    assert fp32.asr > 0.9 and fp32.clean_acc > 0.7, fp32  # a planted backdoor and a working classifier
    assert_parity(fp32, bf16, "backdoor training")
