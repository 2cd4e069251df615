"""WaNet (Nguyen & Tran, ICLR 2021, "WaNet - Imperceptible warping-based backdoor attack").

The trigger is a fixed smooth warp. A (2, k, k) field uniform in [-1, 1] is drawn from `field_seed`,
normalised by its mean absolute value, upsampled (bicubic) to the image size, scaled by s / size and
added to the identity sampling grid (times `grid_rescale`, clipped to [-1, 1]); `grid_sample` applies it.
Noise mode: `cross_ratio * poison_rate` of the training set are cover samples that get the warp plus a
per-sample random grid perturbation (uniform in [-1, 1] / size) and keep their labels, so the network
learns the exact warp rather than any warp. With s = 0 the trigger is the identity.

Reduced: the paper re-draws which images of each batch are poisoned or noised at every step; here, as in
BackdoorBench, the poisoned and cover images are drawn once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from attacks.base import Attack, to_uint8
from benchmark.core.validation import bounded


@dataclass
class WaNet(Attack):
    k: int = bounded(4, 2, 64)  # control grid side
    s: float = bounded(0.5, 0.0)  # warp strength
    grid_rescale: float = bounded(1.0, 0.0)
    cross_ratio: float = bounded(2.0, 0.0)  # cover (noise-mode) samples per poisoned sample
    field_seed: int = bounded(0, lo=0)  # the warping field is fixed by this seed

    def cover_fraction(self) -> float:
        return self.cross_ratio * self.poison_rate

    def _scale(self, h: int, w: int, device: torch.device) -> Tensor:
        """Per-axis size, (x, y) order as in grid_sample's last dim: one pixel is 2 / size in grid units."""
        return torch.tensor([w, h], dtype=torch.float32, device=device)

    def grid(self, h: int, w: int, device: torch.device) -> Tensor:
        """The fixed (1, H, W, 2) sampling grid of the trigger."""
        gen = torch.Generator().manual_seed(self.field_seed)
        ins = torch.rand(1, 2, self.k, self.k, generator=gen) * 2 - 1
        ins = ins / ins.abs().mean()
        field = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1).to(device)
        ys = torch.linspace(-1, 1, h, device=device)
        xs = torch.linspace(-1, 1, w, device=device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack((gx, gy), dim=-1)[None]  # (1, H, W, 2), (x, y) order
        return ((identity + self.s * field / self._scale(h, w, device)) * self.grid_rescale).clamp(-1, 1)

    @staticmethod
    def warp(x: Tensor, grid: Tensor) -> Tensor:
        """Resample uint8 images along `grid` (1 or N, H, W, 2)."""
        grid = grid.expand(len(x), -1, -1, -1)
        return to_uint8(F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True))

    def apply(self, x: Tensor) -> Tensor:
        return self.warp(x, self.grid(*x.shape[-2:], x.device))

    def apply_cover(self, x: Tensor, gen: torch.Generator) -> Tensor:
        h, w = x.shape[-2:]
        noise = torch.rand(len(x), h, w, 2, generator=gen, device=gen.device).to(x.device) * 2 - 1
        grid = (self.grid(h, w, x.device) + noise / self._scale(h, w, x.device)).clamp(-1, 1)
        return self.warp(x, grid)
