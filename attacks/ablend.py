"""Adaptive-Blend (Qi, Xie, Li, Mahloujifar & Mittal, ICLR 2023, "Revisiting the assumption of latent
separability for backdoor defenses").

A blend trigger split into `pieces` tiles on a square grid. Each poisoned training image gets a random
subset of the tiles (a `mask_rate` fraction of them left out) at `train_alpha`; the test trigger is the
whole pattern at `alpha`. Conservatism: `cover_rate` of the training set are regularisation samples that
get the same partial trigger but keep their labels, which weakens the latent separation defenses rely on.

The pattern is our fixed uniform-noise image (see attacks.blend); the authors blend an image we cannot ship.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.blend import Blend, blend
from benchmark.core.errors import ConfigError
from benchmark.core.validation import bounded


@dataclass
class AdaptiveBlend(Blend):
    poison_rate: float = bounded(0.003, 0.0, 1.0)
    alpha: float = bounded(0.2, 0.0, 1.0)  # test-time blend weight (whole pattern)
    train_alpha: float = bounded(0.15, 0.0, 1.0)  # blend weight on poisoned and cover training images
    pieces: int = bounded(16, 1, 4096)  # tiles of the pattern; a perfect square
    mask_rate: float = bounded(0.5, 0.0, 1.0)  # fraction of tiles left out of each training trigger
    cover_rate: float = bounded(0.003, 0.0, 1.0)  # regularisation samples: trigger, label kept

    def __post_init__(self) -> None:
        super().__post_init__()
        if math.isqrt(self.pieces) ** 2 != self.pieces:
            raise ConfigError(f"AdaptiveBlend.pieces={self.pieces} is invalid: expected a perfect square (4, 9, 16...)")

    def cover_fraction(self) -> float:
        return self.cover_rate

    def piece_masks(self, n: int, h: int, w: int, gen: torch.Generator) -> Tensor:
        """(N, 1, H, W) float masks, 1 on the tiles each image keeps; each keeps the same number of tiles."""
        g = math.isqrt(self.pieces)
        keep = self.pieces - round(self.pieces * self.mask_rate)
        order = torch.rand(n, self.pieces, generator=gen, device=gen.device).argsort(1)
        tiles = torch.zeros(n, self.pieces).scatter_(1, order[:, :keep].cpu(), 1.0).view(n, g, g)
        rows = torch.arange(h) * g // h  # tile row of each pixel row
        cols = torch.arange(w) * g // w
        return tiles[:, rows][:, :, cols][:, None]

    def apply_train(self, x: Tensor, gen: torch.Generator) -> Tensor:
        mask = self.piece_masks(len(x), *x.shape[-2:], gen).to(x.device)
        return blend(x, self.pattern(x), self.train_alpha * mask)
