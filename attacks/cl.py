"""Label-consistent backdoor (Turner, Tsipras & Madry, 2019, "Label-consistent backdoor attacks").

Clean-label: target-class training images are first made hard to classify with an untargeted PGD
perturbation of a clean model (L-inf, `eps` on the 0-255 scale), so the model cannot fit them from their
content and leans on the trigger; then the trigger is stamped and the labels are kept. The trigger is
the authors' 3x3 black-and-white pattern in the four corners (mirrored on the right so that horizontal
flips keep it: the paper's answer to data augmentation), or in the bottom-right corner only. At full
amplitude the pattern overwrites pixels (255 / 0); a reduced `amplitude` adds +/- amplitude instead.
Cells grow with the image as BadNets' do. The test trigger is the same pattern.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attacks.base import Attack, AttackContext, to_uint8
from attacks.clean_model import frozen_copy
from benchmark.core.archs import to_input
from benchmark.core.errors import ConfigError
from benchmark.core.progress import Progress
from benchmark.core.validation import bounded

log = logging.getLogger(__name__)

# The authors' corner pattern (+1: white, -1: black) for the top-left and bottom-left corners; the right
# corners carry its mirror image (poison_attack.py of the authors' code, "all-corners").
LEFT = ((1, -1, -1), (-1, 1, -1), (1, -1, 1))
PGD_BATCH = 256  # images per PGD batch: bounds memory on 224x224 images


def corner_pattern(corners: str, h: int, w: int, cell: int, device: torch.device) -> Tensor:
    """(H, W) float: +1 / -1 on the trigger pixels, 0 elsewhere."""
    left = torch.tensor(LEFT, dtype=torch.float32, device=device)
    left = left.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    right, k = left.flip(1), left.shape[0]
    out = torch.zeros(h, w, device=device)
    out[-k:, -k:] = right
    if corners == "all":
        out[:k, :k], out[-k:, :k], out[:k, -k:] = left, left, right
    return out


def pgd_away(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step_size: float) -> Tensor:
    """Untargeted L-inf PGD from `x` (float, [0, 1]): maximise the loss of the true labels `y`."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step_size * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


@dataclass
class LabelConsistent(Attack):
    # null: every target-class training image (BackdoorBench's pratio 0.1 on CIFAR-10); a number is a
    # fraction of the whole training set, drawn from the target class.
    poison_rate: float | None = bounded(None, 0.0, 1.0)
    eps: float = bounded(16.0, 0.0, 255.0)  # L-inf PGD budget on the 0-255 scale
    steps: int = bounded(10, 0)  # PGD steps
    step_size: float | None = bounded(None, 0.0, 255.0)  # on 0-255; null: 2.5 * eps / steps
    corners: Literal["all", "bottom_right"] = "all"
    amplitude: float | None = bounded(None, 0.0, 255.0)  # null: full (overwrite); else +/- this on 0-255
    cell_px: int | None = bounded(None, 1, 64)  # pixels per pattern cell; null: round(image side / 32)

    clean_label = True

    def prepare(self, ctx: AttackContext) -> None:
        self.clean = frozen_copy(ctx.clean_model())

    def pattern(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        return corner_pattern(self.corners, h, w, self.cell_px or max(1, round(min(h, w) / 32)), x.device)

    def apply(self, x: Tensor) -> Tensor:
        p = self.pattern(x)  # (H, W)
        if self.amplitude is None:
            on = p != 0
            return torch.where(on, ((p + 1) * 127.5).to(torch.uint8), x)
        return to_uint8(x.float() + self.amplitude * p)

    def harden(self, x: Tensor) -> Tensor:
        """PGD against the clean model on target-class images: (N, C, H, W) uint8 -> same, perturbed."""
        clean = getattr(self, "clean", None)
        if clean is None:
            raise ConfigError("LabelConsistent needs prepare(ctx) (the clean model) before poisoning")
        if self.steps == 0 or self.eps == 0:
            return x
        device = next(clean.parameters()).device
        step = (self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps) / 255
        out = []
        with Progress("cl adversarial poisons", -(-len(x) // PGD_BATCH), "batch", logger=log) as progress:
            for i in range(0, len(x), PGD_BATCH):
                xb = to_input(x[i : i + PGD_BATCH].to(device))
                yb = torch.full((len(xb),), self.target, device=device)
                out.append(to_uint8(pgd_away(clean, xb, yb, self.eps / 255, self.steps, step) * 255).to(x.device))
                progress.update()
        return torch.cat(out) if out else x.clone()

    def apply_train(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return self.apply(self.harden(x))
