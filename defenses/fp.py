"""FP — Fine-Pruning (Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on
Deep Neural Networks", RAID 2018).

1. Record each channel's mean activation on clean data at the last convolutional feature layer.
   Every architecture here ends in global pooling and one Linear, so the Linear's input *is* that
   layer's per-channel activation (after ReLU and pooling; for ResNets, the last block's output).
2. Prune channels in increasing order of mean activation — backdoor neurons tend to be dormant on
   clean inputs — a `prune_step` fraction at a time, until held-out clean accuracy falls by more than
   `max_acc_drop` (relative) below the unpruned model's; keep the last model within the bound.
   Pruning zeroes the channel's column in the final Linear.
3. Fine-tune the pruned model on the defense data, keeping pruned channels at zero.

Selection uses only the held-out part of the defense data, never test data (BackdoorBench's FP
stops on test accuracy). The curve (pruning only, no fine-tuning) is left for the harness to evaluate.

Precision: the fine-tuning autocasts; the activations that rank the channels and the held-out accuracy of
each pruning step are computed in fp32, so the ranking does not hinge on bf16 ties.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from benchmark.core.archs import classifier_head
from benchmark.core.data import ImageSet
from benchmark.core.premise import chance_bar
from benchmark.core.training import TrainHook, to_input
from benchmark.core.validation import bounded
from defenses.base import CurvePoint, DefenseData, DefenseOutput
from defenses.ft import FineTuning
from defenses.mask_pruning import split_holdout


@dataclass
class FinePruning(FineTuning):
    max_acc_drop: float = bounded(0.1, 0.0, 1.0)
    prune_step: float = bounded(0.01, 1e-6, 1.0)
    holdout_fraction: float = bounded(0.2, 0.01, 0.9)
    curve_step: float = bounded(0.05, 1e-6, 1.0)
    curve_stop: float = bounded(0.9, 0.0, 1.0)

    def __call__(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> DefenseOutput:
        head = last_linear(model)
        fit, holdout = split_holdout(data.images, self.holdout_fraction, gen)
        assert holdout is not None
        order = torch.argsort(mean_features(model, head, fit.x))  # most dormant first
        count, steps = self.prune_count(model, order, holdout)
        pruned = prune_features(model, order[:count])
        tuned = self.finetune(pruned, data, gen, hook=KeepPruned(head_name(model, head), order[:count]))
        info: dict[str, Any] = {
            "layer": head_name(model, head),
            "channels": len(order),
            "pruned": count,
            "rule": f"largest prune count with held-out acc drop <= {self.max_acc_drop} (relative)",
            "holdout_images": len(holdout),
            "holdout_acc_by_pruned": steps,
            "pruned_channels": order[:count].tolist(),
            **tuned,
        }
        info["diagnostics"] = {
            "pruned": count,
            "total_channels": len(order),
            "pruned_fraction": round(count / len(order), 4),
            "acc_per_epoch": tuned["acc_per_epoch"],
            "chance_bar": chance_bar(data.num_classes),
        }
        curve = [self._curve_point(model, order, f) for f in self.curve_fractions()]
        return DefenseOutput(model=pruned.eval(), info=info, curve=curve)

    def prune_count(self, model: nn.Module, order: Tensor, holdout: ImageSet) -> tuple[int, dict[str, float]]:
        """Prune more and more dormant channels while held-out accuracy stays within the allowed drop.

        Pruning only changes the final Linear's input, so the held-out features are computed once and
        each candidate's accuracy is a masked matrix product.
        """
        head = last_linear(model)
        feats = features(model, head, holdout.x)
        step = max(1, math.ceil(self.prune_step * len(order)))
        base = head_accuracy(head, feats, holdout.y, order[:0])
        steps, chosen = {"0": round(base, 4)}, 0
        for n in range(step, len(order), step):
            acc = head_accuracy(head, feats, holdout.y, order[:n])
            steps[str(n)] = round(acc, 4)
            if base - acc > self.max_acc_drop * base:
                break
            chosen = n
        return chosen, steps

    def curve_fractions(self) -> list[float]:
        n = round(self.curve_stop / self.curve_step)
        return [round(i * self.curve_step, 6) for i in range(n + 1)]

    def _curve_point(self, model: nn.Module, order: Tensor, fraction: float) -> CurvePoint:
        n = round(fraction * len(order))
        return CurvePoint(
            params={"fraction": fraction, "pruned": n},
            build=lambda: prune_features(model, order[:n]).eval(),
            key=n,
        )


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier's final Linear; Fine-Pruning needs the features that enter it."""
    return classifier_head(model, "Fine-Pruning cannot find its last layer")


def head_name(model: nn.Module, head: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is head)


@torch.inference_mode()
def features(model: nn.Module, head: nn.Linear, x: Tensor, batch_size: int = 512) -> Tensor:
    """The input of `head` for each image of `x` (uint8), in eval mode: (N, in_features)."""
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].float()))
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(to_input(x[i : i + batch_size]))
    finally:
        handle.remove()
    return torch.cat(captured)


def mean_features(model: nn.Module, head: nn.Linear, x: Tensor, batch_size: int = 512) -> Tensor:
    """Each last-layer channel's mean activation over the images `x`."""
    return features(model, head, x, batch_size).mean(0)


@torch.inference_mode()
def head_accuracy(head: nn.Linear, feats: Tensor, y: Tensor, pruned: Tensor) -> float:
    """Accuracy of the classifier whose final Linear ignores the `pruned` input channels."""
    weight = head.weight.float().clone()
    weight[:, pruned] = 0
    logits = feats @ weight.T + (head.bias.float() if head.bias is not None else 0)
    return (logits.argmax(1) == y).float().mean().item()


def prune_features(model: nn.Module, channels: Tensor) -> nn.Module:
    """A copy of `model` whose final Linear ignores `channels` of its input."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        last_linear(pruned).weight[:, channels] = 0
    return pruned


class KeepPruned(TrainHook):
    """Re-zeroes the pruned columns after every fine-tuning step, so pruned channels stay pruned."""

    def __init__(self, head: str, channels: Tensor) -> None:
        self.head, self.channels = head, channels

    def after_step(self, model: nn.Module, step: int) -> None:
        with torch.no_grad():
            dict(model.named_modules())[self.head].weight[:, self.channels] = 0
