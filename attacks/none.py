"""No attack: the clean model of a cell (same data, architecture, recipe and seed; nothing poisoned).

The baseline no backdoor benchmark shows by default: what a defense costs a model that has no backdoor
to remove. Its model is the harness's clean model (`benchmark.run.model.clean_model`, the one TrojanNN,
CL, FC and AWP start from), so the two share one cache entry and it is trained once.

Its trigger is the empty one (`apply` returns the image unchanged), so the cell's metrics keep their
definitions: `asr` is the fraction of clean non-target test images classified as `target` (the floor any
attack's ASR is read against), `robust_acc` the clean accuracy on those images. What each fixed trigger
does to this clean model (the "natural ASR") is measured by the harness for the attacks in `natural_asr`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from attacks.base import Attack
from benchmark.core.validation import bounded


@dataclass
class NoAttack(Attack):
    poison_rate: float = bounded(0.0, 0.0, 0.0)  # nothing is poisoned
    # Fixed-trigger attacks (conf/attack/<name>.yaml) whose test trigger is applied to the clean model.
    natural_asr: list[str] = field(default_factory=list)

    def apply(self, x: Tensor) -> Tensor:
        return x.clone()
