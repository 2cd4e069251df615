"""Architectures. Each module registers its factories; `Classifier` adds input normalisation.

Adding an architecture: a factory decorated with `@register_arch` in a module imported here, and a
YAML in `conf/arch/`. Factories take `num_classes`, `in_channels` and `norm_layer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from benchmark.core.archs import mobilenet, resnet, resnet_imagenet, vgg  # noqa: F401  (registration)
from benchmark.core.archs.registry import arch_names, build_arch, register_arch
from benchmark.core.errors import ConfigError

__all__ = ["Classifier", "arch_names", "build_arch", "build_classifier", "classifier_head", "register_arch", "to_input"]


class Classifier(nn.Module):
    """A network plus its input normalisation, so every caller feeds images as floats in [0, 1].

    The statistics are non-persistent buffers: `state_dict()` holds only `net.*`, and `net`'s own
    state dict is exactly the bare architecture's (reference checkpoints load into it unchanged).
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def build_classifier(
    name: str,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs: object,
) -> Classifier:
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {in_channels} input channels")
    return Classifier(build_arch(name, num_classes, in_channels, **kwargs), mean, std)


def to_input(x: Tensor) -> Tensor:
    """uint8 (N, C, H, W) images -> float in [0, 1], channels_last (faster convolutions on GPU and CPU)."""
    return x.float().div_(255).contiguous(memory_format=torch.channels_last)


def classifier_head(model: nn.Module, purpose: str) -> nn.Linear:
    """The classifier head: the last `nn.Linear` registered in `model` (every architecture here ends in one).

    Attacks read the features entering it (TrojanNN, FC, DFST) and Fine-Pruning prunes them; `purpose` says
    who asked, for the error on a model without one.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no Linear layer to serve as its classifier head: {purpose}")
    return linears[-1]
