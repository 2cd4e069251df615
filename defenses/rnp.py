"""RNP — Reconstructive Neuron Pruning (Li et al., "Reconstructive Neuron Pruning for Backdoor
Defense", ICML 2023).

1. Unlearn: gradient ascent on the clean defense data until its running accuracy <= `clean_threshold`.
2. Recover: on the unlearned weights, learn per-channel BN masks (gamma only) that restore clean
   accuracy; weights frozen, masks clamped to [0, 1].
3. Prune: on the ORIGINAL model, zero gamma of every channel whose mask <= threshold.

Defaults follow the authors' code (see conf/defense/rnp.yaml). Bugs of the reference fixed here:
gradient clipping (there called before backward, so it never clipped) is off unless asked for;
an unlearning run that never reaches the threshold still yields its final weights (and says so);
no hard-coded class count or image size. The final model is chosen without test data: a fixed
threshold (default), or the largest threshold whose pruned model keeps accuracy on a held-out part
of the defense data.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from benchmark.datasets import ImageSet
from benchmark.evaluate import accuracy
from benchmark.training import autocast, epoch_batches
from benchmark.validation import bounded
from defenses.base import CurvePoint, Defense, DefenseData, DefenseOutput
from defenses.masks import (
    count_below,
    lowest_channels,
    mask_layers,
    mask_values,
    prune_channels,
    with_masked_norm,
)

log = logging.getLogger(__name__)


@dataclass
class RNP(Defense):
    batch_size: int = bounded(128, 1)
    # unlearning
    unlearn_lr: float = bounded(0.01, 0.0)
    unlearn_momentum: float = bounded(0.9, 0.0, 1.0)
    unlearn_weight_decay: float = bounded(5e-4, 0.0)
    unlearn_epochs: int = bounded(20, 1)
    unlearn_milestones: list[int] = field(default_factory=lambda: [10, 20])
    clean_threshold: float = bounded(0.2, 0.0, 1.0)
    unlearn_check: Literal["epoch", "batch"] = "epoch"
    unlearn_grad_clip: float | None = bounded(None, 0.0)
    # mask recovery
    recover_lr: float = bounded(0.2, 0.0)
    recover_momentum: float = bounded(0.9, 0.0, 1.0)
    recover_epochs: int = bounded(20, 1)
    alpha: float = bounded(0.2, 0.0)
    # pruning
    sweep_start: float = bounded(0.0, 0.0, 1.0)
    sweep_stop: float = bounded(0.9, 0.0, 1.0)
    sweep_step: float = bounded(0.05, 1e-6, 1.0)
    selection: Literal["threshold", "holdout"] = "threshold"
    prune_threshold: float = bounded(0.2, 0.0, 1.0)
    holdout_fraction: float = bounded(0.2, 0.0, 0.9)
    max_holdout_drop: float = bounded(0.02, 0.0, 1.0)

    def thresholds(self) -> list[float]:
        n = round((self.sweep_stop - self.sweep_start) / self.sweep_step) + 1
        return [round(self.sweep_start + i * self.sweep_step, 6) for i in range(max(n, 1))]

    def __call__(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> DefenseOutput:
        fit, holdout = split_holdout(data.images, self.holdout_fraction if self.selection == "holdout" else 0.0, gen)
        fit_data = DefenseData(fit, data.augment, data.num_classes)
        unlearned, unlearn_info = self.unlearn(model, fit_data, gen)
        masks, recover_info = self.recover(unlearned, fit_data, gen)
        del unlearned
        curve = [self._curve_point(model, masks, t) for t in self.thresholds()]
        threshold, rule_info = self.select(model, masks, holdout)
        pruned, n_pruned = prune_channels(model, masks, threshold)
        all_masks = torch.cat(list(masks.values()))
        info: dict[str, Any] = {
            "rule": self.selection,
            "selected_threshold": threshold,
            "pruned": n_pruned,
            "total_channels": int(all_masks.numel()),
            "pruned_channels": lowest_channels(masks, threshold),
            "mask_quantiles": {q: round(float(all_masks.quantile(q)), 4) for q in (0.0, 0.01, 0.05, 0.5)},
            "masks_below": {str(t): count_below(masks, t) for t in (0.0, 0.1, 0.2, 0.5)},
            "unlearn": unlearn_info,
            "recover": recover_info,
            **rule_info,
        }
        return DefenseOutput(model=pruned, info=info, curve=curve)

    def unlearn(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> tuple[nn.Module, dict]:
        """Gradient ascent on clean CE over all weights; stop after the first epoch with acc <= threshold."""
        net = copy.deepcopy(model)
        net.train()
        opt = torch.optim.SGD(
            net.parameters(),
            lr=self.unlearn_lr,
            momentum=self.unlearn_momentum,
            weight_decay=self.unlearn_weight_decay,
        )
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, self.unlearn_milestones, 0.1)
        accs: list[float] = []
        bar = tqdm(range(self.unlearn_epochs), desc="rnp unlearn", disable=None, leave=False)
        for _ in bar:
            correct, seen = 0, 0
            for x, y in epoch_batches(data.images, self.batch_size, data.augment, gen):
                with autocast(data.device):
                    logits = net(x)
                    loss = -F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.unlearn_grad_clip is not None:
                    nn.utils.clip_grad_norm_(net.parameters(), self.unlearn_grad_clip)
                opt.step()
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                if self.unlearn_check == "batch" and correct / seen <= self.clean_threshold:
                    break  # the running accuracy of this epoch so far is low enough: stop mid-epoch
            sched.step()
            accs.append(correct / seen)
            bar.set_postfix(acc=f"{accs[-1]:.3f}")
            if accs[-1] <= self.clean_threshold:
                break
        reached = accs[-1] <= self.clean_threshold
        if not reached:
            log.warning(
                "RNP unlearning did not reach clean_threshold=%s in %d epochs (last acc %.3f); using the final weights",
                self.clean_threshold,
                len(accs),
                accs[-1],
            )
        return net, {
            "epochs": len(accs),
            "reached_threshold": reached,
            "acc_per_epoch": [round(a, 4) for a in accs],
        }

    def recover(self, unlearned: nn.Module, data: DefenseData, gen: torch.Generator) -> tuple[dict, dict]:
        """Learn BN masks on the unlearned weights (only masks train), clamped to [0, 1] after each step."""
        net = with_masked_norm(unlearned)
        layers = mask_layers(net)
        masks = [m.neuron_mask for m in layers.values()]
        for p in net.parameters():
            p.requires_grad_(False)
        for m in masks:
            m.requires_grad_(True)
        net.train()
        opt = torch.optim.SGD(masks, lr=self.recover_lr, momentum=self.recover_momentum)
        accs: list[float] = []
        for _ in tqdm(range(self.recover_epochs), desc="rnp recover", disable=None, leave=False):
            correct, seen = 0, 0
            for x, y in epoch_batches(data.images, self.batch_size, data.augment, gen):
                with autocast(data.device):
                    logits = net(x)
                    loss = self.alpha * F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for m in masks:
                        m.clamp_(0.0, 1.0)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
            accs.append(correct / seen)
        return mask_values(net), {"epochs": self.recover_epochs, "acc_per_epoch": [round(a, 4) for a in accs]}

    def select(self, model: nn.Module, masks: dict, holdout: ImageSet | None) -> tuple[float, dict]:
        """The final threshold, chosen without test data."""
        if self.selection == "threshold" or holdout is None:
            return self.prune_threshold, {}
        base = accuracy(model, holdout)
        scores = {t: accuracy(prune_channels(model, masks, t)[0], holdout) for t in self.thresholds()}
        ok = [t for t, acc in scores.items() if acc >= base - self.max_holdout_drop]
        chosen = max(ok) if ok else min(scores)
        return chosen, {
            "holdout_images": len(holdout),
            "holdout_acc_unpruned": round(base, 4),
            "holdout_acc": {str(t): round(a, 4) for t, a in scores.items()},
        }

    def _curve_point(self, model: nn.Module, masks: dict, threshold: float) -> CurvePoint:
        n = count_below(masks, threshold)
        return CurvePoint(
            params={"threshold": threshold, "pruned": n},
            build=lambda: prune_channels(model, masks, threshold)[0],
            key=n,  # thresholds are cumulative, so the count identifies the pruned set
        )


def split_holdout(images: ImageSet, fraction: float, gen: torch.Generator) -> tuple[ImageSet, ImageSet | None]:
    """Split the defense data into the part the defense trains on and a held-out part for selection."""
    n_hold = round(fraction * len(images))
    if n_hold == 0:
        return images, None
    order = torch.randperm(len(images), device=images.x.device, generator=gen)
    return images.subset(order[n_hold:]), images.subset(order[:n_hold])
