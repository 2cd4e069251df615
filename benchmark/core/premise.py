"""Whether a defense's mechanism worked in a cell (its premise), judged from the diagnostics it recorded.

Every defense records `diagnostics` in its info (result.json `defense_info.diagnostics`): the signals that
say whether its mechanism did what it relies on (RNP: did unlearning reach its threshold and did mask
recovery leave chance accuracy; ANP: did any mask fall to the pruning threshold; ...). `premise_verdict`
turns them into `held`, `failed: <reason>` or `n/a` — one rule per defense, all here, so that the run
(which writes the verdict) and the tests agree. A `failed` premise says the number beside it is not the
defense's mechanism at work (e.g. RNP at ASR 1.000 because recovery never left chance), not that the
defense cannot work.

Also here: whether the backdoor implanted at all (`implant_check`), since a defense on a model without a
backdoor measures nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CHANCE_MARGIN = 0.10
"""Accuracy within this many points of chance (1 / num_classes) counts as chance. RNP's failure case
(issue 24: a ResNet-18 on Fashion-MNIST) sat at 0.118 for all 20 recovery epochs with chance 0.100, while the
authors' CIFAR-10 log climbs from 0.198 to 0.652: 10 points separates the two with room on both sides."""

MAX_PRUNED_FRACTION = 0.5
"""A pruning defense that removes more than half its channels has not singled out backdoor channels (its
premise: a few channels carry the backdoor); the model that remains is another network."""

IBAU_MAX_DROP = 0.20
"""I-BAU's unlearning must keep the model's clean behaviour: a defense-data accuracy more than 20 points below
where it started means the unlearning broke the model (as the authors' lr 1e-3 does on ResNet-18s)."""

IMPLANT_BAR = 0.5
"""ASR before any defense below which the backdoor counts as not implanted: the trigger moves fewer than half
the non-target test images to the target. Cells that missed it (issue 26: ASR 0.096 and 0.109, i.e. chance
for 10 classes) are noise to a defense; the attacks here implant at 0.6-1.0 (tests/methods/test_implant.py)."""

HELD, NA = "held", "n/a"


def chance_bar(num_classes: int) -> float:
    """The accuracy a mechanism must exceed to count as having left chance: 1 / num_classes + CHANCE_MARGIN."""
    return round(1.0 / max(num_classes, 1) + CHANCE_MARGIN, 6)


def failed(reason: str) -> str:
    return f"failed: {reason}"


def _pruned_rule(d: dict[str, Any], what: str) -> str | None:
    """The shared check of pruning defenses: something was pruned, and not most of the network."""
    pruned, total = d.get("pruned"), d.get("total_channels")
    if not isinstance(pruned, int) or not isinstance(total, int) or total <= 0:
        return None
    if pruned == 0:
        return failed(f"{what}: nothing pruned")
    if pruned / total > MAX_PRUNED_FRACTION:
        share = f"{pruned} of {total} channels pruned (> {MAX_PRUNED_FRACTION:.0%})"
        return failed(f"{share}: no backdoor channels singled out")
    return None


def rnp_premise(d: dict[str, Any]) -> str:
    """RNP: unlearning must reach its clean threshold and mask recovery must climb above chance."""
    if not d.get("unlearn_reached_threshold", True):
        last = (d.get("unlearn_acc_per_epoch") or [float("nan")])[-1]
        return failed(f"unlearning never reached clean_threshold (last defense-data acc {last:.3f})")
    if not d.get("recovery_left_chance", True):
        best = max(d.get("recover_acc_per_epoch") or [float("nan")])
        return failed(f"mask recovery stayed at chance (best acc {best:.3f} <= {d.get('chance_bar')})")
    return _pruned_rule(d, "no mask fell to the threshold") or HELD


def anp_premise(d: dict[str, Any]) -> str:
    """ANP: adversarial noise must push some masks to the pruning threshold, but not most of them."""
    return _pruned_rule(d, "no mask fell to the threshold") or HELD


def fp_premise(d: dict[str, Any]) -> str:
    """FP: dormant channels must be prunable within the accuracy bound, and fine-tuning must fit the data."""
    if d.get("pruned") == 0:
        return failed("held-out accuracy fell past the bound at the first pruning step: nothing pruned")
    return _fit_rule(d) or HELD


def _fit_rule(d: dict[str, Any], key: str = "acc_per_epoch") -> str | None:
    """Fine-tuning defenses rely on the model still fitting the clean data: the last accuracy above chance."""
    accs, bar = d.get(key) or [], d.get("chance_bar")
    if accs and isinstance(bar, (int, float)) and accs[-1] <= bar:
        return failed(f"defense-data accuracy fell to chance ({accs[-1]:.3f} <= {bar})")
    return None


def ft_premise(d: dict[str, Any]) -> str:
    return _fit_rule(d) or HELD


def nad_premise(d: dict[str, Any]) -> str:
    """NAD: the teacher and the distilled student must both fit the clean data."""
    if (r := _fit_rule(d, "teacher_acc_per_epoch")) is not None:
        return r.replace("defense-data", "teacher's defense-data")
    return _fit_rule(d) or HELD


def ibau_premise(d: dict[str, Any]) -> str:
    """I-BAU: unlearning the universal perturbation must keep clean accuracy (not chance, not far below its start)."""
    if (r := _fit_rule(d)) is not None:
        return r
    accs, start = d.get("acc_per_epoch") or [], d.get("acc_start")
    if accs and isinstance(start, (int, float)) and start - accs[-1] > IBAU_MAX_DROP:
        return failed(f"defense-data accuracy fell from {start:.3f} to {accs[-1]:.3f} (> {IBAU_MAX_DROP:.2f})")
    return HELD


def clp_premise(d: dict[str, Any]) -> str:
    """CLP: some channels' Lipschitz upper bounds must stand out (mean + u * std) of their layer."""
    return _pruned_rule(d, f"no channel's Lipschitz bound exceeded mean + {d.get('u')} std") or HELD


RULES: dict[str, Callable[[dict[str, Any]], str]] = {
    "rnp": rnp_premise,
    "anp": anp_premise,
    "fp": fp_premise,
    "ft": ft_premise,
    "nad": nad_premise,
    "ibau": ibau_premise,
    "clp": clp_premise,
}


def premise_verdict(defense: str, diagnostics: dict[str, Any] | None) -> str:
    """`held`, `failed: <reason>` or `n/a` (no defense, a defense without a rule, or nothing recorded)."""
    rule = RULES.get(defense)
    if rule is None or not diagnostics:
        return NA
    return rule(diagnostics)


def implant_check(asr_before: float, bar: float = IMPLANT_BAR) -> dict[str, Any]:
    """result.json's `implant`: the ASR before any defense, the bar, and whether the backdoor took."""
    return {"asr_before": asr_before, "bar": bar, "held": bool(asr_before >= bar)}
