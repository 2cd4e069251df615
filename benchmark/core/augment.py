"""Batched augmentation on uint8 tensors, on whatever device they live: no per-sample Python."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from benchmark.core.validation import Checked, bounded


@dataclass
class AugmentSpec(Checked):
    """Random crop after zero padding by `crop_pad` pixels, then horizontal flip with probability 0.5."""

    crop_pad: int = bounded(4, 0, 64)
    flip: bool = True


def random_crop_flip(x: Tensor, spec: AugmentSpec, gen: torch.Generator | None = None) -> Tensor:
    """(N, C, H, W) uint8 -> (N, C, H, W) uint8, each image shifted and flipped independently."""
    n, _, h, w = x.shape
    out = x
    if spec.crop_pad > 0:
        p = spec.crop_pad
        padded = F.pad(x, (p, p, p, p))  # (N, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=gen)
        dx = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=gen)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        out = padded[batch, chans, rows, cols]
    if spec.flip:
        flip = torch.rand(n, device=x.device, generator=gen) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out
