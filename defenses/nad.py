"""NAD — Neural Attention Distillation (Li et al., "Neural Attention Distillation: Erasing Backdoor
Triggers from Deep Neural Networks", ICLR 2021).

1. Teacher: a copy of the backdoored model fine-tuned on the clean defense data.
2. Student: the backdoored model trained with CE + sum_k beta_k * MSE(A_s^k, A_t^k), where the
   attention map A = normalise(sum_c |F_c|^p) of the feature maps F at a few stages.

Stages are chosen generically: the module with the most direct children that contain a Conv2d (the
network's chain of stages: ResNet layers, VGG convs, MobileNet blocks) and the last K of those
children, K = len(betas); their outputs are the feature maps.

Precision: forward passes and the CE autocast; the attention maps (sums of squared activations, then
normalised) are computed in fp32, where bf16 would lose the small differences the betas of 500-1000 amplify.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.core.errors import ConfigError
from benchmark.core.premise import chance_bar
from benchmark.core.progress import Progress
from benchmark.core.training import device_sum, epoch_batches
from benchmark.core.validation import bounded
from defenses.base import Defense, DefenseData, DefenseOutput

log = logging.getLogger(__name__)


@dataclass
class NAD(Defense):
    batch_size: int = bounded(64, 1)
    momentum: float = bounded(0.9, 0.0, 1.0)
    nesterov: bool = True
    weight_decay: float = bounded(1e-4, 0.0)
    teacher_epochs: int = bounded(10, 0)
    teacher_lr: float = bounded(0.01, 0.0)
    epochs: int = bounded(20, 1)
    lr: float = bounded(0.01, 0.0)  # BackdoorBench's; the authors' opening at 0.1 collapses ResNets (nad.yaml)
    milestones: list[int] = field(default_factory=list)
    betas: list[float] = field(default_factory=lambda: [500.0, 1000.0, 1000.0])
    p: float = bounded(2.0, 0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.betas or min(self.betas) < 0:
            raise ConfigError(f"NAD.betas={self.betas!r} is invalid: expected one or more values >= 0")

    def __call__(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> DefenseOutput:
        stages = attention_stages(model, len(self.betas))
        teacher = copy.deepcopy(model)
        teacher_accs = self.finetune(teacher, data, gen)
        student = copy.deepcopy(model)
        history = self.distill(student, teacher, stages, data, gen)
        info: dict[str, Any] = {
            "stages": dict(zip(stages, self.betas, strict=True)),
            "teacher_epochs": self.teacher_epochs,
            "teacher_acc_per_epoch": teacher_accs,
            "epochs": self.epochs,
            **history,
        }
        info["diagnostics"] = {
            "teacher_acc_per_epoch": teacher_accs,
            "acc_per_epoch": history["acc_per_epoch"],  # the student's running accuracy on the defense data
            "chance_bar": chance_bar(data.num_classes),
        }
        return DefenseOutput(model=student, info=info)

    def finetune(self, net: nn.Module, data: DefenseData, gen: torch.Generator) -> list[float]:
        """Plain CE fine-tuning of the teacher; returns the running accuracy per epoch."""
        opt = self._sgd(net, self.teacher_lr)
        net.train()
        accs = []
        progress = Progress("nad teacher", self.teacher_epochs, logger=log)
        for _ in range(self.teacher_epochs):
            correct, seen = device_sum(data.device, torch.long), 0  # read once an epoch, not each batch
            for x, y in epoch_batches(data.images, self.batch_size, data.augment, gen):
                with data.precision.autocast(data.device):
                    logits = net(x)
                    loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
            accs.append(round(correct.item() / seen, 4))
            progress.update({"acc": accs[-1]})
        progress.close()
        return accs

    def distill(
        self, student: nn.Module, teacher: nn.Module, stages: list[str], data: DefenseData, gen: torch.Generator
    ) -> dict[str, list[float]]:
        """CE + attention distillation from the (frozen, eval-mode) teacher; returns per-epoch losses and the
        student's running accuracy on the defense data."""
        opt = self._sgd(student, self.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, self.milestones, 0.1)
        teacher.eval()
        student.train()
        ce_hist, at_hist, acc_hist = [], [], []
        progress = Progress("nad distill", self.epochs, logger=log)
        with capture(student, stages) as s_maps, capture(teacher, stages) as t_maps:
            for _ in range(self.epochs):
                ce_sum, at_sum, n = device_sum(data.device), device_sum(data.device), 0  # read once an epoch
                correct = device_sum(data.device, torch.long)
                for x, y in epoch_batches(data.images, self.batch_size, data.augment, gen):
                    with data.precision.autocast(data.device):
                        with torch.no_grad():
                            teacher(x)
                        logits = student(x)
                        ce = F.cross_entropy(logits, y)
                        at = sum(
                            b * attention_loss(s_maps[k], t_maps[k], self.p)
                            for k, b in zip(stages, self.betas, strict=True)
                        )
                        loss = ce + at
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    ce_sum += ce.detach().double() * len(y)
                    at_sum += at.detach().double() * len(y)
                    n += len(y)
                    correct += (logits.detach().argmax(1) == y).sum()
                sched.step()
                acc_hist.append(round(correct.item() / n, 4))
                ce_hist.append(round(ce_sum.item() / n, 4))
                at_hist.append(round(at_sum.item() / n, 4))
                progress.update({"ce": ce_hist[-1], "attention loss": at_hist[-1]})
        progress.close()
        return {"ce_per_epoch": ce_hist, "attention_loss_per_epoch": at_hist, "acc_per_epoch": acc_hist}

    def _sgd(self, net: nn.Module, lr: float) -> torch.optim.SGD:
        return torch.optim.SGD(
            net.parameters(),
            lr=lr,
            momentum=self.momentum,
            nesterov=self.nesterov and self.momentum > 0,
            weight_decay=self.weight_decay,
        )


def attention_map(features: Tensor, p: float) -> Tensor:
    """(N, C, H, W) -> (N, H*W): channel power sum_c |F_c|^p, L2-normalised per image."""
    power = features.float().abs().pow(p).sum(1).flatten(1)
    return F.normalize(power, dim=1, eps=1e-6)


def attention_loss(student: Tensor, teacher: Tensor, p: float) -> Tensor:
    return F.mse_loss(attention_map(student, p), attention_map(teacher, p).detach())


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def attention_stages(model: nn.Module, k: int) -> list[str]:
    """Names of the last `k` conv-bearing children of the module with the most such children.

    That module is the network's chain of stages (ties: the shallowest), found without knowing the
    architecture.
    """
    best_name, best = "", []
    for name, module in model.named_modules():
        kids = [f"{name}.{c}" if name else c for c, child in module.named_children() if _has_conv(child)]
        if len(kids) > len(best):
            best_name, best = name, kids
    if len(best) < k:
        raise ValueError(f"NAD needs {k} stages but {type(model).__name__} ({best_name!r}) has {len(best)}")
    return best[-k:]


@contextmanager
def capture(model: nn.Module, names: list[str]) -> Iterator[dict[str, Tensor]]:
    """Forward hooks that keep the latest output of each named module while the context is open."""
    maps: dict[str, Tensor] = {}
    modules = dict(model.named_modules())

    def keep(name: str):
        def hook(_m: nn.Module, _inp: tuple, out: Tensor) -> None:
            maps[name] = out

        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
