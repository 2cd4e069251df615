"""I-BAU — Implicit Backdoor Adversarial Unlearning (Zeng et al., "Adversarial Unlearning of
Backdoors via Implicit Hypergradient", ICLR 2022).

Minimax on the clean defense data, per round:
- inner max: one universal perturbation delta (one image's shape, shared by all images) that maximises
  CE against the model's own predictions, with an L2 penalty (one SGD pass over the data), then
  projected onto the L2 ball of radius `norm_bound` (in [0, 1] pixel units; null: no projection);
- outer min: for every batch, CE of the model on the batch with delta added to a `outer_portion` of its
  images, differentiated through the inner problem with the implicit hypergradient: delta* is treated
  as a fixed point of one gradient step of the inner loss, and the inverse-Jacobian product is
  approximated by K fixed-point iterations v <- J^T v + dL_outer/d delta (Grazzi et al., 2020), which
  adds the indirect term (d delta*/d theta)^T v to the direct gradient.
The model is in eval mode throughout (BN running statistics frozen), as in the authors' script.
The hypergradient runs in fp32 (second derivatives); only the perturbation search uses autocast.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.core.evaluate import accuracy
from benchmark.core.premise import chance_bar
from benchmark.core.progress import Progress
from benchmark.core.training import device_sum, epoch_batches
from benchmark.core.validation import bounded
from defenses.base import Defense, DefenseData, DefenseOutput

log = logging.getLogger(__name__)


@dataclass
class IBAU(Defense):
    batch_size: int = bounded(100, 1)
    lr: float = bounded(1e-4, 0.0)  # BackdoorBench's; the authors' 1e-3 breaks ResNet-18s (conf/defense/ibau.yaml)
    n_rounds: int = bounded(5, 1)
    K: int = bounded(5, 0)
    inner_lr: float = bounded(0.1, 0.0)
    pert_lr: float = bounded(10.0, 0.0)
    pert_penalty: float = bounded(0.001, 0.0)
    norm_bound: float | None = bounded(10.0, 0.0)
    outer_portion: float = bounded(0.01, 0.0, 1.0)

    def __call__(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> DefenseOutput:
        net = copy.deepcopy(model)
        net.eval()
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.lr)
        rounds: list[dict[str, float]] = []
        start_acc = accuracy(net, data.images, precision=data.precision)  # inference only: no RNG, eval mode kept
        progress = Progress("i-bau", self.n_rounds, "round", logger=log)
        for _ in range(self.n_rounds):
            pert, adv_loss = self.find_perturbation(net, data, gen)
            batches = list(epoch_batches(data.images, self.batch_size, None, gen))
            x0, y0 = batches[0]  # the inner problem's fixed-point map uses one batch, as in the reference
            outer_sum, n = device_sum(data.device), 0  # read once a round, not each batch
            for x, y in batches:
                opt.zero_grad(set_to_none=True)
                outer = self.hypergradient(net, params, pert, (x0, y0), (x, y), gen)
                opt.step()
                outer_sum += outer.double() * len(y)
                n += len(y)
            rounds.append(
                {
                    "pert_norm": round(float(pert.norm()), 4),
                    "adv_loss": round(adv_loss, 4),
                    "outer_loss": round(outer_sum.item() / n, 4),
                    "defense_acc": round(accuracy(net, data.images, precision=data.precision), 4),
                }
            )
            progress.update(rounds[-1])
        progress.close()
        info: dict[str, Any] = {"rounds": len(rounds), "per_round": rounds, "hypergradient": f"fixed point, K={self.K}"}
        info["diagnostics"] = {
            "acc_start": round(start_acc, 4),
            "acc_per_epoch": [r["defense_acc"] for r in rounds],  # per round, on the (clean) defense data
            "chance_bar": chance_bar(data.num_classes),
        }
        return DefenseOutput(model=net, info=info)

    def find_perturbation(self, net: nn.Module, data: DefenseData, gen: torch.Generator) -> tuple[Tensor, float]:
        """Inner max: one SGD pass over the data on a universal delta, then projection onto the L2 ball."""
        delta = torch.zeros(1, *data.images.x.shape[1:], device=data.device, requires_grad=True)
        opt = torch.optim.SGD([delta], lr=self.pert_lr)
        total, n = device_sum(data.device), 0  # read once, after the pass
        for x, _y in epoch_batches(data.images, self.batch_size, None, gen):
            with data.precision.autocast(data.device):
                with torch.no_grad():
                    pred = net(x).argmax(1)  # the model's own labels: push away from whatever it predicts
                ce = F.cross_entropy(net(x + delta), pred)
            loss = -ce + self.pert_penalty * delta.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += ce.detach().double() * len(x)
            n += len(x)
        delta = delta.detach()
        if self.norm_bound is not None:
            delta = project_l2(delta, self.norm_bound)
        return delta, total.item() / max(n, 1)

    def inner_loss(self, net: nn.Module, delta: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return -F.cross_entropy(net(x + delta), y) + self.pert_penalty * delta.pow(2).sum()

    def outer_loss(self, net: nn.Module, delta: Tensor, batch: tuple[Tensor, Tensor], gen: torch.Generator) -> Tensor:
        """CE on the batch with delta added to a random `outer_portion` of its images (true labels)."""
        x, y = batch
        k = int(len(x) * self.outer_portion)
        chosen = torch.randperm(len(x), device=x.device, generator=gen)[:k]
        patch = torch.zeros(len(x), 1, 1, 1, device=x.device)
        patch[chosen] = 1.0
        return F.cross_entropy(net(x + patch * delta), y)

    def hypergradient(
        self,
        net: nn.Module,
        params: list[Tensor],
        pert: Tensor,
        inner_batch: tuple[Tensor, Tensor],
        outer_batch: tuple[Tensor, Tensor],
        gen: torch.Generator,
    ) -> Tensor:
        """Set p.grad to the implicit hypergradient of the outer loss; returns the outer loss (on the device)."""
        delta = pert.detach().requires_grad_(True)
        outer = self.outer_loss(net, delta, outer_batch, gen)
        g_delta, *g_direct = torch.autograd.grad(outer, [delta, *params], allow_unused=True)
        # fixed-point map Phi(delta, theta) = delta - inner_lr * d inner / d delta, kept differentiable
        g_inner = torch.autograd.grad(self.inner_loss(net, delta, inner_batch), delta, create_graph=True)[0]
        mapped = delta - self.inner_lr * g_inner
        v = torch.zeros_like(delta)
        for _ in range(self.K):  # v ~ (I - dPhi/d delta)^-T dL_outer/d delta
            v = torch.autograd.grad(mapped, delta, grad_outputs=v, retain_graph=True)[0] + g_delta
        g_indirect = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
        for p, a, b in zip(params, g_direct, g_indirect, strict=True):
            p.grad = _add(a, b, p)
        return outer.detach()


def _add(a: Tensor | None, b: Tensor | None, like: Tensor) -> Tensor:
    total = torch.zeros_like(like)
    for g in (a, b):
        if g is not None:
            total = total + g
    return total


def project_l2(delta: Tensor, radius: float) -> Tensor:
    """Scale delta into the L2 ball of `radius` (unchanged when already inside)."""
    norm = float(delta.norm())
    return delta * min(1.0, radius / norm) if norm > 0 else delta
