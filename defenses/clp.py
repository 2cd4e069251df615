"""CLP — Channel Lipschitzness-based Pruning (Zheng et al., "Data-free Backdoor Removal based on
Channel Lipschitzness", ECCV 2022).

Data-free: for every convolution whose output feeds a BatchNorm2d directly, each output channel's
upper-bound channel Lipschitz constant (UCLC) is the spectral norm of its kernel, reshaped to
(in_channels / groups, kh * kw) and scaled by the BN factor |gamma / sqrt(var + eps)|. Channels whose
UCLC exceeds mean + u * std of their layer are pruned: their BN gamma and beta are zeroed, as in the
authors' code. Conv -> BN pairs are found by running one all-zero dummy batch (only the image shape
of the defense data is used) and matching each BN's input tensor to a convolution's output tensor,
so every architecture is handled without per-architecture code. BNs that do not read a conv output
directly (e.g. the pre-activation BNs of PreAct-ResNet, which read a residual sum) are not
considered; `defense_info` lists them.

Precision: data-free and all fp32 (the Lipschitz bounds come from the weights alone), so the outcome does
not depend on the run's precision.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.core.validation import bounded
from defenses.base import CurvePoint, Defense, DefenseData, DefenseOutput


@dataclass
class CLP(Defense):
    u: float = bounded(3.0, 0.0)
    curve_start: float = bounded(0.0, 0.0)
    curve_stop: float = bounded(5.0, 0.0)
    curve_step: float = bounded(0.5, 1e-6)

    def __call__(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> DefenseOutput:
        example = torch.zeros(2, *data.images.x.shape[1:], device=data.device)  # shape only: data-free
        pairs, unpaired_norms = conv_norm_pairs(model, example)
        if not pairs:
            raise ValueError(f"{type(model).__name__} has no Conv2d feeding a BatchNorm2d: CLP has nothing to prune")
        modules = dict(model.named_modules())
        lips = {norm: channel_lipschitz(modules[conv], modules[norm]) for conv, norm in pairs}
        chosen = outliers(lips, self.u)
        rows = [
            {"layer": norm, "channel": int(c), "uclc": round(float(lips[norm][c]), 4)}
            for norm, idx in chosen.items()
            for c in idx.tolist()
        ]
        info: dict[str, Any] = {
            "u": self.u,
            "pruned": len(rows),
            "total_channels": int(sum(v.numel() for v in lips.values())),
            "layers_considered": len(pairs),
            "pairs": [f"{conv} -> {norm}" for conv, norm in pairs],
            "norms_not_considered": unpaired_norms,
            "pruned_per_layer": {norm: int(idx.numel()) for norm, idx in chosen.items() if idx.numel()},
            "pruned_channels": sorted(rows, key=lambda r: -r["uclc"]),
        }
        info["diagnostics"] = {
            "u": self.u,
            "pruned": info["pruned"],
            "total_channels": info["total_channels"],
            "pruned_fraction": round(info["pruned"] / max(info["total_channels"], 1), 4),
        }
        curve = [self._curve_point(model, lips, u) for u in self.curve_values()]
        return DefenseOutput(model=prune_norm_channels(model, chosen), info=info, curve=curve)

    def curve_values(self) -> list[float]:
        n = round((self.curve_stop - self.curve_start) / self.curve_step) + 1
        return [round(self.curve_start + i * self.curve_step, 6) for i in range(max(n, 1))]

    def _curve_point(self, model: nn.Module, lips: dict[str, Tensor], u: float) -> CurvePoint:
        chosen = outliers(lips, u)
        n = int(sum(idx.numel() for idx in chosen.values()))
        # a smaller u prunes a superset, so the count identifies the pruned set
        return CurvePoint(params={"u": u, "pruned": n}, build=lambda: prune_norm_channels(model, chosen), key=n)


@torch.no_grad()
def conv_norm_pairs(model: nn.Module, example: Tensor) -> tuple[list[tuple[str, str]], list[str]]:
    """(conv name, BN name) for every BatchNorm2d whose input is exactly a Conv2d's output, in forward order.

    Also returns the BNs that read something else (a sum, an activation), which CLP leaves alone.
    """
    produced: dict[int, tuple[str, Tensor]] = {}  # id(output) -> (conv name, output), refs kept alive
    pairs: list[tuple[str, str]] = []
    unpaired: list[str] = []
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}

    def on_conv(name: str):
        def hook(_m: nn.Module, _inp: tuple, out: Tensor) -> None:
            produced[id(out)] = (name, out)

        return hook

    def on_norm(name: str):
        def hook(m: nn.Module, args: tuple) -> None:
            src = produced.get(id(args[0]))
            if src is not None and src[1] is args[0] and convs[src[0]].out_channels == m.num_features:
                pairs.append((src[0], name))
            else:
                unpaired.append(name)

        return hook

    handles = [m.register_forward_hook(on_conv(n)) for n, m in convs.items()]
    handles += [m.register_forward_pre_hook(on_norm(n)) for n, m in norms.items()]
    was_training = model.training
    try:
        model.eval()  # no running-statistics update from the dummy batch
        model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return pairs, unpaired


def channel_lipschitz(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> Tensor:
    """UCLC of each output channel: spectral norm of its (in/groups, kh*kw) kernel times |gamma / std| (CPU)."""
    w = conv.weight.detach().float()
    kernels = w.reshape(w.shape[0], w.shape[1], -1)  # (out, in/groups, kh*kw)
    scale = norm.weight.detach().float() / torch.sqrt(norm.running_var.float() + norm.eps)
    return (torch.linalg.matrix_norm(kernels, ord=2) * scale.abs()).cpu()


def outliers(lips: dict[str, Tensor], u: float) -> dict[str, Tensor]:
    """Channel indices whose UCLC exceeds its layer's mean + u * std (per layer)."""
    return {name: torch.nonzero(v > v.mean() + u * v.std()).flatten() for name, v in lips.items()}


def prune_norm_channels(model: nn.Module, chosen: dict[str, Tensor]) -> nn.Module:
    """A copy of `model` with BN gamma and beta zeroed at the chosen channels (the channel outputs 0)."""
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    with torch.no_grad():
        for name, idx in chosen.items():
            norm = modules[name]
            norm.weight[idx.to(norm.weight.device)] = 0.0
            norm.bias[idx.to(norm.bias.device)] = 0.0
    return pruned
