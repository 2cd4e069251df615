"""ANP — Adversarial Neuron Pruning (Wu & Wang, "Adversarial Neuron Pruning Purifies Backdoored Deep
Models", NeurIPS 2021).

Per BN channel a mask m in [0, 1] and two noises: the perturbed forward uses gamma * (m + delta) and
beta * (1 + xi). Each iteration draws the noises uniformly in [-eps, eps], takes `steps` sign-gradient
ascent steps on them, then updates the masks on alpha * CE(clean forward) + (1 - alpha) * CE(perturbed
forward) and clamps them to [0, 1]. Channels that the adversarial noise can most easily turn into a
backdoor shortcut end with small masks and are pruned (gamma zeroed) on the original model.

Defaults follow the authors' code (see conf/defense/anp.yaml). As there, the noise is not projected back
into [-eps, eps] after its ascent step (`project_noise: true` does project it).

Precision: the clean and perturbed forward passes and losses autocast; the masks, the neuron noise, their
sign steps and their clamps (to [0, 1] and [-eps, eps]) stay fp32, where small mask updates are not rounded
away (tests/methods/test_precision_parity.py).

Fidelity and speed: eager, the masks are bit for bit those of a loop written from the authors' code on the same
batches and noise (tests/methods/test_fidelity.py). No value is read to the host inside the loop (the loss means
only when a progress line is due), and `compile=reduce-overhead` runs the masked model's forward and backward as
CUDA graphs on a GPU (2,000 iterations of batch 128 are bound by kernel launches there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.core.data import ImageSet
from benchmark.core.precision import Precision
from benchmark.core.progress import Progress
from benchmark.core.training import device_sum, epoch_batches
from benchmark.core.validation import bounded
from defenses.base import DefenseData, Learned
from defenses.mask_pruning import MaskPruningDefense
from defenses.masks import MaskedBatchNorm2d, clamp_unit, mask_layers, mask_values, with_masked_norm

log = logging.getLogger(__name__)


@dataclass
class ANP(MaskPruningDefense):
    batch_size: int = bounded(128, 1)
    iterations: int = bounded(2000, 1)
    eps: float = bounded(0.4, 0.0)
    steps: int = bounded(1, 1)
    alpha: float = bounded(0.2, 0.0, 1.0)
    mask_lr: float = bounded(0.2, 0.0)
    mask_momentum: float = bounded(0.9, 0.0, 1.0)
    project_noise: bool = False

    def learn(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> Learned:
        start = time.perf_counter()
        masks, info = self.optimize_masks(model, data, gen)
        info["seconds"] = round(time.perf_counter() - start, 3)  # recorded only (scale study)
        return masks, info

    def optimize_masks(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> tuple[dict, dict]:
        """Learn the masks against adversarial neuron noise; weights stay frozen, model in train mode."""
        net = with_masked_norm(model)
        layers = list(mask_layers(net).values())
        masks = [m.neuron_mask for m in layers]
        noises = [p for m in layers for p in (m.neuron_noise, m.neuron_noise_bias)]
        for p in net.parameters():
            p.requires_grad_(False)
        for p in masks + noises:
            p.requires_grad_(True)
        mask_opt = torch.optim.SGD(masks, lr=self.mask_lr, momentum=self.mask_momentum)
        noise_opt = torch.optim.SGD(noises, lr=self.eps / self.steps)
        net.train()
        forward = data.compilation.wrap(net, data.device)  # `net` itself unless `compile` asks otherwise
        batches = endless_batches(data.images, self.batch_size, data, gen)
        nat_sum = rob_sum = device_sum(data.device, torch.float32)
        progress = Progress("anp masks", self.iterations, "iteration", logger=log)
        for i in range(self.iterations):
            x, y = next(batches)
            data.compilation.step(data.device)
            if self.eps > 0:
                self._perturb(forward, layers, noises, noise_opt, x, y, gen, data.precision)
            loss_nat, loss_rob = self._mask_losses(forward, layers, x, y, data.precision)
            loss = self.alpha * loss_nat + (1 - self.alpha) * loss_rob
            mask_opt.zero_grad(set_to_none=True)
            loss.backward()
            mask_opt.step()
            clamp_unit(masks)
            nat_sum = nat_sum + loss_nat.detach()
            rob_sum = rob_sum + loss_rob.detach()
            # Lines are time-throttled; the running means are read (one device sync) only for a line.
            progress.update(
                lambda a=nat_sum, b=rob_sum, n=i + 1: {"clean loss": a.item() / n, "perturbed loss": b.item() / n}
            )
        progress.close()
        info = {
            "iterations": self.iterations,
            "mean_clean_loss": round(nat_sum.item() / self.iterations, 4),
            "mean_perturbed_loss": round(rob_sum.item() / self.iterations, 4),
        }
        return mask_values(net), info

    def _perturb(
        self,
        net: nn.Module,
        layers: list[MaskedBatchNorm2d],
        noises: list[Tensor],
        opt: torch.optim.Optimizer,
        x: Tensor,
        y: Tensor,
        gen: torch.Generator,
        precision: Precision,
    ) -> None:
        """Random start in [-eps, eps], then `steps` sign-gradient steps that increase the clean loss.

        Whole-list (`_foreach`) ops and one random draw for all noises: ANP runs this 2,000 times, and
        per-tensor ops would cost ~200 kernel launches an iteration on a GPU.
        """
        with torch.no_grad():
            draw = torch.rand(sum(p.numel() for p in noises), device=x.device, generator=gen)
            draw.mul_(2 * self.eps).sub_(self.eps)
            torch._foreach_copy_(noises, list(draw.split([p.numel() for p in noises])))
        _set_perturbed(layers, True)
        for _ in range(self.steps):
            with precision.autocast(x.device):
                loss = -F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch._foreach_sign_([p.grad for p in noises])
            opt.step()
            if self.project_noise:
                with torch.no_grad():
                    torch._foreach_clamp_min_(noises, -self.eps)
                    torch._foreach_clamp_max_(noises, self.eps)
        # The noise's gradient is spent: dropped, so that the mask step's backward does not add into it (with CUDA
        # graphs it is memory of the graph's pool that later replays reuse). The masks do not depend on it.
        opt.zero_grad(set_to_none=True)

    def _mask_losses(
        self, net: nn.Module, layers: list[MaskedBatchNorm2d], x: Tensor, y: Tensor, precision: Precision
    ) -> tuple[Tensor, Tensor]:
        """CE of the clean forward, and of the perturbed one (zero when eps == 0)."""
        loss_rob = torch.zeros((), device=x.device)
        if self.eps > 0 and self.alpha < 1:
            _set_perturbed(layers, True)
            with precision.autocast(x.device):
                loss_rob = F.cross_entropy(net(x), y)
        _set_perturbed(layers, False)
        with precision.autocast(x.device):
            loss_nat = F.cross_entropy(net(x), y)
        return loss_nat, loss_rob


def _set_perturbed(layers: list[MaskedBatchNorm2d], on: bool) -> None:
    for m in layers:
        m.perturbed = on


def endless_batches(images: ImageSet, batch_size: int, data: DefenseData, gen: torch.Generator) -> Iterator:
    """Augmented batches, epoch after epoch, for an iteration-counted loop."""
    while True:
        yield from epoch_batches(images, batch_size, data.augment, gen)
