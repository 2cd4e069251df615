"""RNP — Reconstructive Neuron Pruning (Li et al., "Reconstructive Neuron Pruning for Backdoor
Defense", ICML 2023).

1. Unlearn: gradient ascent on the clean defense data until its running accuracy <= `clean_threshold`.
2. Recover: on the unlearned weights, learn per-channel BN masks (gamma only) that restore clean
   accuracy; weights frozen, masks clamped to [0, 1].
3. Prune: on the ORIGINAL model, zero gamma of every channel whose mask <= threshold.

Defaults follow the authors' code (see conf/defense/rnp.yaml). Bugs of the reference fixed here:
gradient clipping (there called before backward, so it never clipped) is off unless asked for;
an unlearning run that never reaches the threshold still yields its final weights (and says so);
no hard-coded class count or image size. The final model is chosen without test data (see
`defenses.mask_pruning`): a fixed threshold (default), a fixed count, or the largest threshold whose
pruned model keeps accuracy on a held-out part of the defense data.

Precision: the unlearning and recovery forward passes and losses autocast (bf16 on CUDA by default); the
masks, their optimiser steps and their clamps to [0, 1] stay fp32 (bf16 would round a mask step of lr x grad
away near 1), and so does the pruning (tests/methods/test_precision_parity.py).

Fidelity and speed: eager, the unlearned weights and the masks are bit for bit those of loops written from the
authors' code on the same batches (tests/methods/test_fidelity.py). Accuracy counts stay on the device and are read
once an epoch (`unlearn_check=batch` reads each batch, as its stop needs); `compile` compiles both loops.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.core.premise import chance_bar
from benchmark.core.progress import Progress
from benchmark.core.training import device_sum, epoch_batches
from benchmark.core.validation import bounded
from defenses.base import DefenseData, Learned
from defenses.mask_pruning import MaskPruningDefense
from defenses.masks import clamp_unit, mask_layers, mask_values, with_masked_norm

log = logging.getLogger(__name__)


@dataclass
class RNP(MaskPruningDefense):
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

    def learn(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> Learned:
        start = time.perf_counter()
        unlearned, unlearn_info = self.unlearn(model, data, gen)
        unlearn_info["seconds"] = round(time.perf_counter() - start, 3)  # recorded only (scale study)
        start = time.perf_counter()
        masks, recover_info = self.recover(unlearned, data, gen)
        recover_info["seconds"] = round(time.perf_counter() - start, 3)
        del unlearned
        info = {"unlearn": unlearn_info, "recover": recover_info}
        info["diagnostics"] = rnp_diagnostics(unlearn_info, recover_info, data.num_classes)
        return masks, info

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
        forward = data.compilation.wrap(net, data.device)  # `net` itself unless `compile` asks otherwise
        accs: list[float] = []
        progress = Progress("rnp unlearn", self.unlearn_epochs, logger=log)
        for _ in range(self.unlearn_epochs):
            correct, seen, loss_sum = device_sum(data.device, torch.long), 0, device_sum(data.device, torch.float32)
            for x, y in epoch_batches(data.images, self.batch_size, data.augment, gen):
                data.compilation.step(data.device)
                with data.precision.autocast(data.device):
                    logits = forward(x)
                    loss = -F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.unlearn_grad_clip is not None:
                    nn.utils.clip_grad_norm_(net.parameters(), self.unlearn_grad_clip)
                opt.step()
                correct += (logits.detach().argmax(1) == y).sum()  # counted on the device: no sync per batch
                seen += len(y)
                loss_sum += loss.detach() * len(y)  # for the progress line only
                # The authors' per-batch stop reads the running accuracy (one sync a batch, by its nature).
                if self.unlearn_check == "batch" and correct.item() / seen <= self.clean_threshold:
                    break  # the running accuracy of this epoch so far is low enough: stop mid-epoch
            sched.step()
            accs.append(correct.item() / seen)  # the epoch stop's one read
            progress.update(lambda s=loss_sum, n=seen: {"loss": s.item() / n, "acc": accs[-1]})
            if accs[-1] <= self.clean_threshold:
                break
        progress.close()
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
        forward = data.compilation.wrap(net, data.device)
        accs: list[float] = []
        progress = Progress("rnp recover", self.recover_epochs, logger=log)
        for _ in range(self.recover_epochs):
            correct, seen, loss_sum = device_sum(data.device, torch.long), 0, device_sum(data.device, torch.float32)
            for x, y in epoch_batches(data.images, self.batch_size, data.augment, gen):
                data.compilation.step(data.device)
                with data.precision.autocast(data.device):
                    logits = forward(x)
                    loss = self.alpha * F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                clamp_unit(masks)
                correct += (logits.detach().argmax(1) == y).sum()  # counted on the device: no sync per batch
                seen += len(y)
                loss_sum += loss.detach() * len(y)  # for the progress line only
            accs.append(correct.item() / seen)  # one read an epoch
            progress.update(lambda s=loss_sum, n=seen: {"loss": s.item() / n, "acc": accs[-1]})
        progress.close()
        return mask_values(net), {"epochs": self.recover_epochs, "acc_per_epoch": [round(a, 4) for a in accs]}


def rnp_diagnostics(unlearn: dict, recover: dict, num_classes: int) -> dict:
    """What tells whether RNP's premise held, from the accuracies its loops already counted (no extra pass):
    unlearning's epochs and defense-data accuracy per epoch, recovery's accuracy per epoch, and whether
    recovery ever left chance (1 / num_classes + a margin: `benchmark.core.premise.chance_bar`)."""
    bar = chance_bar(num_classes)
    return {
        "num_classes": num_classes,
        "unlearn_epochs": unlearn["epochs"],
        "unlearn_reached_threshold": unlearn["reached_threshold"],
        "unlearn_acc_per_epoch": unlearn["acc_per_epoch"],
        "recover_acc_per_epoch": recover["acc_per_epoch"],
        "chance_bar": bar,
        "recovery_left_chance": any(a > bar for a in recover["acc_per_epoch"]),
    }
