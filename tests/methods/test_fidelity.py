"""RNP and ANP against their authors' loops, bit for bit, on a fixed model and fixed batches (fp32, CPU).

The references below are written here from the authors' code, step by step and in its order, so that a faster
loop (sync-free counters, whole-list updates, a compiled or captured iteration) cannot change what the defenses
compute without this failing:
- ANP: csdongxian/ANP_backdoor @ 85acbae, optimize_mask_cifar.py `mask_train` (reset the noise, sign-gradient
  noise step, then the mask step on alpha * clean CE + (1 - alpha) * perturbed CE, clip_mask), with the
  NoisyBatchNorm2d forward of models/anp_batchnorm.py (gamma * (mask + noise), beta * (1 + noise_bias)).
- RNP: bboylyg/RNP @ 966e060, main.py `train_step_unlearning` (SGD ascent on CE, its gradient clip called before
  backward, where no gradient exists yet; the epoch stop at train accuracy <= clean_threshold) and
  `train_step_recovering` (mask SGD on alpha * CE, clip_mask), BN masks on gamma only.
Randomness is matched, not reproduced: both sides get the same batches, and ANP's noise draws are handed over
(the authors draw per layer with `init.uniform_`, which rounds in double; ours draws once for all layers).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.core.archs import build_classifier, to_input
from benchmark.core.augment import AugmentSpec
from benchmark.core.data import ImageSet
from defenses import anp as anp_module
from defenses import rnp as rnp_module
from defenses.anp import ANP
from defenses.base import DefenseData
from defenses.rnp import RNP

CLASSES = 5
Batch = tuple[Tensor, Tensor]


class AuthorsNoisyBN(nn.BatchNorm2d):
    """The authors' BN with a mask and two noises (ANP's NoisyBatchNorm2d; RNP's mask BN is its unperturbed path)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum)
        self.load_state_dict(bn.state_dict())
        self.neuron_mask = nn.Parameter(torch.ones(bn.num_features))
        self.neuron_noise = nn.Parameter(torch.zeros(bn.num_features))
        self.neuron_noise_bias = nn.Parameter(torch.zeros(bn.num_features))
        self.is_perturbed = False

    def forward(self, x: Tensor) -> Tensor:
        self.num_batches_tracked = self.num_batches_tracked + 1
        if self.is_perturbed:
            coeff_weight, coeff_bias = self.neuron_mask + self.neuron_noise, 1.0 + self.neuron_noise_bias
        else:
            coeff_weight, coeff_bias = self.neuron_mask, 1.0
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight * coeff_weight, self.bias * coeff_bias,
            True, self.momentum, self.eps,
        )  # fmt: skip


def authors_model(model: nn.Module) -> tuple[nn.Module, dict[str, AuthorsNoisyBN]]:
    net = copy.deepcopy(model)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(module, name, AuthorsNoisyBN(child))
    return net, {n: m for n, m in net.named_modules() if isinstance(m, AuthorsNoisyBN)}


def noisy(layers: dict[str, AuthorsNoisyBN], on: bool) -> None:
    for m in layers.values():
        m.is_perturbed = on


def authors_anp(model: nn.Module, batches: list[Batch], noise: list[Tensor], a: ANP) -> dict[str, Tensor]:
    net, layers = authors_model(model)
    params = list(net.named_parameters())
    mask_opt = torch.optim.SGD([p for n, p in params if "neuron_mask" in n], lr=a.mask_lr, momentum=a.mask_momentum)
    noise_params = [p for n, p in params if "neuron_noise" in n]
    noise_opt = torch.optim.SGD(noise_params, lr=a.eps / a.steps)
    for p in net.parameters():  # the authors train only masks and noises (they pass only those to optimisers)
        p.requires_grad_(any(k in n for k in ("neuron_mask", "neuron_noise") for n, q in params if q is p))
    net.train()
    for (x, y), draw in zip(batches, noise, strict=True):
        if a.eps > 0.0:
            with torch.no_grad():  # reset(rand_init=True), layer by layer: noise then noise_bias
                for p, values in zip(noise_params, draw.split([p.numel() for p in noise_params]), strict=True):
                    p.copy_(values)
            for _ in range(a.steps):
                noise_opt.zero_grad()
                noisy(layers, True)
                loss_noise = -F.cross_entropy(net(x), y)
                loss_noise.backward()
                for p in noise_params:
                    p.grad.data = torch.sign(p.grad.data)
                noise_opt.step()
        mask_opt.zero_grad()
        loss_rob = 0.0
        if a.eps > 0.0:
            noisy(layers, True)
            loss_rob = F.cross_entropy(net(x), y)
        noisy(layers, False)
        loss_nat = F.cross_entropy(net(x), y)
        loss = a.alpha * loss_nat + (1 - a.alpha) * loss_rob
        loss.backward()
        mask_opt.step()
        with torch.no_grad():
            for m in layers.values():
                m.neuron_mask.clamp_(0.0, 1.0)
    return {n: m.neuron_mask.detach().clone() for n, m in layers.items()}


def authors_rnp(model: nn.Module, epochs: list[list[Batch]], r: RNP) -> tuple[nn.Module, dict[str, Tensor], int]:
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=r.unlearn_lr, momentum=0.9, weight_decay=r.unlearn_weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=r.unlearn_milestones, gamma=0.1)
    feed = iter(epochs)
    unlearned_epochs = 0
    for _ in range(r.unlearn_epochs):
        net.train()
        correct, seen = 0, 0
        for x, y in next(feed):
            opt.zero_grad()
            output = net(x)
            loss = F.cross_entropy(output, y)
            correct += int(output.data.max(1)[1].eq(y).sum())
            seen += len(y)
            nn.utils.clip_grad_norm_(net.parameters(), max_norm=20, norm_type=2)  # no gradient yet: a no-op
            (-loss).backward()
            opt.step()
        sched.step()
        unlearned_epochs += 1
        if correct / seen <= r.clean_threshold:
            break
    masked, layers = authors_model(net)
    for p in masked.parameters():
        p.requires_grad_(False)
    masks = [m.neuron_mask for m in layers.values()]
    for m in masks:
        m.requires_grad_(True)
    mask_opt = torch.optim.SGD(masks, lr=r.recover_lr, momentum=0.9)
    for _ in range(r.recover_epochs):
        masked.train()
        for x, y in next(feed):
            mask_opt.zero_grad()
            loss = r.alpha * F.cross_entropy(masked(x), y)
            loss.backward()
            mask_opt.step()
            with torch.no_grad():
                for m in masks:
                    m.clamp_(0.0, 1.0)
    return net, {n: m.neuron_mask.detach().clone() for n, m in layers.items()}, unlearned_epochs


def model() -> nn.Module:
    torch.manual_seed(0)
    return build_classifier("resnet18", CLASSES, 3, [0.5] * 3, [0.25] * 3, width=8)


def batches(count: int, size: int = 12, seed: int = 1) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [
        (to_input(torch.randint(0, 256, (size, 3, 16, 16), generator=g, dtype=torch.uint8)),
         torch.randint(0, CLASSES, (size,), generator=g))
        for _ in range(count)
    ]  # fmt: skip


def data() -> DefenseData:
    """What the defenses are handed; the loops below are fed the fixed batches instead of drawing from it."""
    return DefenseData(
        ImageSet(torch.zeros(12, 3, 16, 16, dtype=torch.uint8), torch.zeros(12).long()), AugmentSpec(), 5
    )


@pytest.mark.parametrize("knobs", [{}, {"steps": 2, "alpha": 0.5}, {"eps": 0.0}])
def test_anp_masks_are_the_authors_bit_for_bit(knobs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    a = ANP(batch_size=12, iterations=6, **knobs)
    fixed = batches(a.iterations)
    monkeypatch.setattr(anp_module, "endless_batches", lambda *_args: iter(fixed))
    ours, _ = a.learn(model(), data(), torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same stream ours drew its noise from: one draw an iteration
    total = 2 * sum(len(m) for m in ours.values())
    noise = [torch.rand(total, generator=g).mul_(2 * a.eps).sub_(a.eps) if a.eps > 0 else None for _ in fixed]
    theirs = authors_anp(model(), fixed, noise, a)
    assert list(ours) == list(theirs)
    changed = sum(int((m != 1).sum()) for m in theirs.values())
    assert changed > 0, "the masks never moved: the comparison would say nothing"
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), f"{name}: ANP's mask differs from the authors' loop"


def feed(monkeypatch: pytest.MonkeyPatch, epochs: list[list[Batch]]) -> None:
    """RNP's loops take `epochs`, one list of batches per call of `epoch_batches`."""
    queue: Iterator[list[Batch]] = iter(epochs)
    monkeypatch.setattr(rnp_module, "epoch_batches", lambda *_args: iter(next(queue)))


@pytest.mark.parametrize("threshold", [0.0, 0.5])  # 0.0: every unlearning epoch runs; 0.5: it stops early
def test_rnp_unlearning_and_masks_are_the_authors_bit_for_bit(
    threshold: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = RNP(batch_size=12, unlearn_epochs=4, unlearn_milestones=[2], recover_epochs=3, clean_threshold=threshold,
            unlearn_lr=0.05)  # fmt: skip
    epochs = [batches(3, seed=s) for s in range(r.unlearn_epochs + r.recover_epochs)]
    feed(monkeypatch, epochs[: r.unlearn_epochs])
    unlearned, info = r.unlearn(model(), data(), torch.Generator())
    feed(monkeypatch, epochs[r.unlearn_epochs :])
    ours, _ = r.recover(unlearned, data(), torch.Generator())
    ran = info["epochs"]
    theirs_net, theirs, their_epochs = authors_rnp(model(), epochs[:ran] + epochs[r.unlearn_epochs :], r)
    assert ran == their_epochs and (ran < r.unlearn_epochs) == (threshold == 0.5)
    for (name, p), q in zip(unlearned.state_dict().items(), theirs_net.state_dict().values(), strict=True):
        assert torch.equal(p, q), f"{name}: the unlearned weights differ from the authors' loop"
    assert sum(int((m != 1).sum()) for m in theirs.values()) > 0
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), f"{name}: RNP's mask differs from the authors' loop"
