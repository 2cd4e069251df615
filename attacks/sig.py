"""SIG (Barni, Kallas & Tondi, ICIP 2019, "A new backdoor attack in CNNs by training set corruption
without label poisoning").

Clean-label: a horizontal sinusoid x'(i, j) = x(i, j) + delta sin(2 pi j f / W) is added to target-class
training images only, whose labels are kept; at test time to every non-target image. Clipped to [0, 255].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.base import Attack, to_uint8
from benchmark.core.validation import bounded


@dataclass
class SIG(Attack):
    # null: every target-class training image (what BackdoorBench's pratio 0.1 amounts to on CIFAR-10).
    poison_rate: float | None = bounded(None, 0.0, 1.0)
    delta: float = bounded(40.0, 0.0, 255.0)  # amplitude on the 0-255 scale
    frequency: float = bounded(6.0, 0.0)  # periods across the image width

    clean_label = True

    def signal(self, width: int, device: torch.device) -> Tensor:
        """The (1, 1, 1, W) sinusoid, constant down each column."""
        j = torch.arange(width, device=device, dtype=torch.float32)
        return (self.delta * torch.sin(2 * math.pi * j * self.frequency / width)).view(1, 1, 1, width)

    def apply(self, x: Tensor) -> Tensor:
        return to_uint8(x.float() + self.signal(x.shape[-1], x.device))
