"""Trojan, fixed-patch variant of TrojanNN (Liu et al., NDSS 2018, "Trojaning attack on neural networks").

REDUCED: TrojanNN optimises the pixels inside a trigger mask to excite chosen neurons of a clean model,
then retrains on data stamped with that trigger. Here the patch is fixed: a square in the bottom-right
corner filled with uniform noise from `pattern_seed` (the mask shape of the paper's square trigger, with
an un-optimised content), stamped opaquely like BadNets. The patch side is `sqrt(area)` of the image
side, drawn at 32x32 scale and resized so it grows with the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from attacks.base import Attack, to_uint8, uniform_pattern
from benchmark.validation import bounded


@dataclass
class Trojan(Attack):
    area: float = bounded(0.07, 0.0, 1.0)  # patch area as a fraction of the image area
    pattern_seed: int = bounded(0, lo=0)  # the patch content is fixed by this seed

    def side(self, h: int, w: int) -> int:
        return max(1, round(math.sqrt(self.area) * min(h, w)))

    def patch(self, x: Tensor) -> Tensor:
        """The (1, C, k, k) uint8 patch for images shaped like `x`."""
        base = self.side(32, 32)
        k = self.side(*x.shape[-2:])
        return to_uint8(uniform_pattern(self.pattern_seed, x.shape[1], base, k, k, x.device))

    def apply(self, x: Tensor) -> Tensor:
        patch = self.patch(x)
        k = patch.shape[-1]
        out = x.clone()
        out[..., -k:, -k:] = patch
        return out
