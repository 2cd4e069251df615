"""Per-channel masks on batch-norm layers, swapped into any architecture (RNP, ANP).

`MaskedBatchNorm2d` computes y = gamma * (m + d) * x_hat + beta * (1 + e), with mask m (ones) and
noises d, e (zeros, used only by ANP's perturbed forward). Defenses never keep copies of the
architectures: they deep-copy a model and swap this layer in for every BatchNorm2d.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class MaskedBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.neuron_mask = nn.Parameter(torch.ones(num_features))
        self.neuron_noise = nn.Parameter(torch.zeros(num_features))
        self.neuron_noise_bias = nn.Parameter(torch.zeros(num_features))
        self.perturbed = False  # ANP switches this on for its adversarial forward

    def forward(self, x: Tensor) -> Tensor:
        if self.perturbed:
            weight = self.weight * (self.neuron_mask + self.neuron_noise)
            bias = self.bias * (1 + self.neuron_noise_bias)
        else:
            weight, bias = self.weight * self.neuron_mask, self.bias
        use_batch_stats = self.training or self.running_mean is None
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            weight,
            bias,
            use_batch_stats,
            momentum,
            self.eps,
        )


def _maskable(module: nn.Module) -> bool:
    return type(module) is nn.BatchNorm2d and module.affine and module.track_running_stats


def mask_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The masks `with_masked_norm` gives `model`: layer name -> (channels,)."""
    return {name: (m.num_features,) for name, m in model.named_modules() if _maskable(m)}


def with_masked_norm(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with every BatchNorm2d replaced by a MaskedBatchNorm2d holding its state."""
    masked = copy.deepcopy(model)
    for _name, module in list(masked.named_modules()):
        for child_name, child in list(module.named_children()):
            if _maskable(child):
                new = MaskedBatchNorm2d(child.num_features, child.eps, child.momentum)
                new.load_state_dict(child.state_dict(), strict=False)
                new.to(child.weight.device)
                setattr(module, child_name, new)
    if not mask_layers(masked):
        raise ValueError(f"{type(model).__name__} has no affine BatchNorm2d layer to put masks on")
    return masked


def mask_layers(model: nn.Module) -> dict[str, MaskedBatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedBatchNorm2d)}


def mask_values(model: nn.Module) -> dict[str, Tensor]:
    """Layer name -> detached mask vector (on the CPU)."""
    return {name: m.neuron_mask.detach().float().cpu().clone() for name, m in mask_layers(model).items()}


def prune_channels(model: nn.Module, masks: dict[str, Tensor], threshold: float) -> tuple[nn.Module, int]:
    """A copy of the ORIGINAL `model` with gamma zeroed (beta kept) where mask <= threshold.

    Layer names in `masks` are those of `model`, since the masked copy keeps the module tree.
    Returns the pruned copy and the number of channels pruned.
    """
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    count = 0
    with torch.no_grad():
        for name, mask in masks.items():
            drop = (mask <= threshold).to(modules[name].weight.device)
            modules[name].weight[drop] = 0.0
            count += int(drop.sum())
    return pruned, count


@torch.no_grad()
def clamp_unit(masks: list[Tensor]) -> None:
    """Clamp every mask into [0, 1] in place, in two whole-list ops (one per bound) rather than one per layer."""
    torch._foreach_clamp_min_(masks, 0.0)
    torch._foreach_clamp_max_(masks, 1.0)


def count_below(masks: dict[str, Tensor], threshold: float) -> int:
    return int(sum((m <= threshold).sum() for m in masks.values()))


def lowest_channels(
    masks: dict[str, Tensor], threshold: float, learned: dict[str, Tensor] | None = None
) -> list[dict[str, object]]:
    """The channels at or below `threshold`, lowest mask first: what a pruning step removed. With `learned` (the
    masks before a cut by count set them to 0 and 1), each row keeps the learned value: how sure the defense was."""
    values = masks if learned is None else learned
    rows = [
        {"layer": name, "channel": int(i), "mask": round(float(values[name][i]), 4)}
        for name, m in masks.items()
        for i in (m <= threshold).nonzero().flatten().tolist()
    ]
    return sorted(rows, key=lambda r: r["mask"])
