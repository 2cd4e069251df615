"""Feature collision, Poison Frogs (Shafahi et al., NeurIPS 2018, "Poison frogs! Targeted clean-label
poisoning attacks on neural networks"), used as a backdoor.

Poison Frogs crafts a poison p from a base image b of the target class so that a clean model's
penultimate features of p collide with those of a target instance t while p stays close to b:
minimise ||f(p) - f(t)||^2 by gradient steps, starting from b watermarked with t at `watermark` opacity
(the paper's end-to-end setting), with the step size cut by 5 whenever the objective rises, and p kept in
an L-inf ball of `eps` around b (the bounded variant of the poisoning benchmark of Schwarzschild et al.,
2021) or, with `eps: null`, pulled back by the paper's proximal step (x + lr*beta*b) / (1 + lr*beta).

As a backdoor: each poison gets its own target instance, a random non-target training image stamped
with the trigger (the BadNets checkerboard), so the poisons, labelled with their true (target) class,
sit where triggered images of every class sit in feature space. The clean model is then retrained on
the poisoned set (fine-tuned by default, as Poison Frogs retrains a pretrained network).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attacks.badnets import BadNets
from attacks.base import AttackContext, to_uint8
from attacks.clean_model import Retrained, penultimate
from benchmark.core.archs import to_input
from benchmark.core.errors import ConfigError
from benchmark.core.progress import Progress
from benchmark.core.validation import bounded

log = logging.getLogger(__name__)

CRAFT_BATCH = 256  # poisons crafted together: bounds memory on 224x224 images


@dataclass
class FeatureCollision(Retrained, BadNets):
    # null: every target-class training image; a number is a fraction of the whole training set.
    poison_rate: float | None = bounded(0.05, 0.0, 1.0)
    steps: int = bounded(120, 0)  # crafting iterations
    lr: float = bounded(0.01, 0.0)  # initial step size on [0, 1] images
    eps: float | None = bounded(None, 0.0, 255.0)  # L-inf budget around the base on 0-255; null: proximal
    beta0: float = bounded(0.25, 0.0)  # proximal weight (eps: null), scaled by (features / pixels)^2
    watermark: float = bounded(0.3, 0.0, 1.0)  # opacity of the target instance blended into the start
    finetune_epochs: int = bounded(4, 1)
    finetune_lr: float = bounded(0.05, 0.0)

    clean_label = True

    def patch(self, size: int, device: torch.device) -> Tensor:
        """The BadNets checkerboard with cells of `cell_px`, by default 3x BadNets' (9x9 on 32x32)."""
        return BadNets(cell_px=self.cell_px or max(1, round(3 * size / 32))).patch(size, device)

    def prepare(self, ctx: AttackContext) -> None:
        super().prepare(ctx)
        self.sources = ctx.train.x[ctx.train.y != self.target]  # non-target images to trigger, (M, C, H, W)
        if len(self.sources) == 0:
            raise ConfigError(f"FeatureCollision needs non-target training images; all are class {self.target}")

    def apply_train(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Poisons from target-class bases `x`, each colliding with a random triggered non-target image."""
        clean = self.clean_or_fail()
        pick = torch.randint(0, len(self.sources), (len(x),), generator=gen, device=gen.device).cpu()
        targets = self.apply(self.sources[pick])
        device = next(clean.parameters()).device
        out = []
        with Progress("fc crafting poisons", -(-len(x) // CRAFT_BATCH), "batch", logger=log) as progress:
            for i in range(0, len(x), CRAFT_BATCH):
                base = to_input(x[i : i + CRAFT_BATCH].to(device))
                target = to_input(targets[i : i + CRAFT_BATCH].to(device))
                out.append(to_uint8(self.craft(clean, base, target) * 255).to(x.device))
                progress.update()
        return torch.cat(out) if out else x.clone()

    def craft(self, model: nn.Module, base: Tensor, target: Tensor) -> Tensor:
        """Poisons (N, C, H, W) in [0, 1] from bases and target instances, each optimised on its own."""
        with torch.no_grad():
            goal = penultimate(model, target)
        beta = self.beta0 * (goal.shape[1] / base[0].numel()) ** 2
        lr = torch.full((len(base), 1, 1, 1), self.lr, device=base.device)
        x = self.project(self.watermark * target + (1 - self.watermark) * base, base)
        best = self.objective(model, x, goal, base, beta)
        for _ in range(self.steps):
            x.requires_grad_(True)
            dist = (penultimate(model, x) - goal).pow(2).sum(1)
            (grad,) = torch.autograd.grad(dist.sum(), x)
            step = x.detach() - lr * grad
            if self.eps is None:
                step = (step + lr * beta * base) / (1 + lr * beta)
            cand = self.project(step, base)
            obj = self.objective(model, cand, goal, base, beta)
            better = obj <= best  # per poison: accept the step, else keep x and shrink its step size
            x = torch.where(better[:, None, None, None], cand, x.detach())
            best = torch.where(better, obj, best)
            lr = torch.where(better[:, None, None, None], lr, lr * 0.2)
        return x.detach()

    def project(self, x: Tensor, base: Tensor) -> Tensor:
        if self.eps is not None:
            x = base + (x - base).clamp(-self.eps / 255, self.eps / 255)
        return x.clamp(0, 1)

    @torch.no_grad()
    def objective(self, model: nn.Module, x: Tensor, goal: Tensor, base: Tensor, beta: float) -> Tensor:
        """Per-poison objective: feature distance (+ the proximal term when unbounded)."""
        obj = (penultimate(model, x) - goal).pow(2).sum(1)
        if self.eps is None:
            obj = obj + beta * (x - base).pow(2).flatten(1).sum(1)
        return obj
