"""BadNets (Gu et al., 2017): a small fixed checkerboard patch in the bottom-right corner.

Reference pixels on 32x32: rows/cols 29-31, row patterns (0,0,255) / (0,255,0) / (255,0,255) on every
channel. On other sizes each of the 3x3 cells becomes a square of round(min(H, W) / 32) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.base import Attack
from benchmark.core.validation import bounded

PATTERN = ((0, 0, 255), (0, 255, 0), (255, 0, 255))


@dataclass
class BadNets(Attack):
    cell_px: int | None = bounded(None, 1, 64)  # pixels per checker cell; null: scale with image size

    def patch(self, size: int, device: torch.device) -> Tensor:
        """The (3s, 3s) uint8 checkerboard for images of side `size`."""
        s = self.cell_px or max(1, round(size / 32))
        base = torch.tensor(PATTERN, dtype=torch.uint8, device=device)
        return base.repeat_interleave(s, 0).repeat_interleave(s, 1)

    def apply(self, x: Tensor) -> Tensor:
        patch = self.patch(min(x.shape[-2:]), x.device)
        k = patch.shape[0]
        out = x.clone()
        out[..., -k:, -k:] = patch  # broadcast over batch and channels
        return out
