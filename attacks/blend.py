"""Blend (Chen et al., 2017, "Targeted backdoor attacks on deep learning systems using data poisoning").

The trigger is a fixed pattern mixed into the whole image: x' = (1 - alpha) x + alpha p, alpha 0.2 at
train and test time. BackdoorBench blends the Hello-Kitty image, which we cannot ship; like ANP's
reference we use a fixed noise image instead (uniform noise from `pattern_seed`, drawn at
`pattern_px` x `pattern_px` and resized to the image size).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attacks.base import Attack, to_uint8, uniform_pattern
from benchmark.core.validation import bounded


def blend(x: Tensor, pattern: Tensor, alpha: float | Tensor) -> Tensor:
    """(1 - alpha) x + alpha pattern on uint8 images; `alpha` may be a per-pixel map (N, 1, H, W)."""
    return to_uint8((1 - alpha) * x.float() + alpha * pattern)


@dataclass
class Blend(Attack):
    alpha: float = bounded(0.2, 0.0, 1.0)  # blend weight of the pattern
    pattern_seed: int = bounded(0, lo=0)  # the noise pattern is fixed by this seed
    pattern_px: int = bounded(32, 1, 1024)  # side of the noise image before resizing to the image size

    def pattern(self, x: Tensor) -> Tensor:
        """The (1, C, H, W) float pattern in [0, 255] for images shaped like `x`."""
        return uniform_pattern(self.pattern_seed, x.shape[1], self.pattern_px, *x.shape[-2:], x.device)

    def apply(self, x: Tensor) -> Tensor:
        return blend(x, self.pattern(x), self.alpha)
