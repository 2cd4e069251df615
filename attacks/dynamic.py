"""Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020, "Input-Aware Dynamic Backdoor Attack").

Two encoder-decoder generators make a trigger for each image: a pattern g(x) in [0, 1] and a mask
m(x) in [0, 1] (a steep tanh threshold of the mask network's output); the triggered image is
x + (g(x) - x) * m(x).

`prepare` builds both generators from `init_seed` (BatchNorm statistics from clean images); training
(the hook) then runs the paper's two stages:
1. before the first classifier step, the mask generator is pre-trained alone on the clean training images
   for `mask_epochs` with lambda_norm * mean(relu(m(x) - mask_density)) (sparse masks) + lambda_div *
   diversity (different images get different masks), Adam; then it is frozen;
2. joint training, inside the harness's one training loop: in every batch the first
   `poison_rate` share of the images get their own trigger and the target label ("attack" mode), the
   next `cross_rate` share get the trigger of ANOTHER image of the batch and keep their label ("cross"
   mode: a trigger works only on the image it was made for). The pattern generator is trained jointly:
   the classifier's loss reaches it through the triggered images, and its diversity loss
   ||x1 - x2|| / ||g(x1) - g(x2)|| is back-propagated in the hook; it steps its own Adam after each
   classifier step, its learning rate cut 10x at the authors' milestones (as fractions of training).

So the shared poisoning leaves the training set clean (`poisons_in_hook`) and `poison_rate` is the
authors' p_attack. Triggered training images are rounded to the uint8 grid (straight-through), as the
test trigger `apply` is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from attacks.base import Attack, AttackContext, to_uint8
from attacks.generators import (
    CALIBRATION_IMAGES,
    EncoderDecoder,
    apply_batched,
    calibrate_norms,
    diversity_loss,
    load_module_state,
    module_state,
    quantise,
    seeded,
)
from benchmark.core.archs import to_input
from benchmark.core.errors import ConfigError
from benchmark.core.progress import Progress
from benchmark.core.training import TrainHook, epoch_batches
from benchmark.core.validation import bounded

log = logging.getLogger(__name__)


def step_decay(milestones: list[float], total: int, gamma: float = 0.1) -> Callable[[int], float]:
    """A LambdaLR factor: x`gamma` at each milestone (given as fractions of `total` steps)."""
    marks = [int(m * total) for m in milestones]
    return lambda step: gamma ** sum(step >= m for m in marks)


@dataclass
class InputAware(Attack):
    poison_rate: float = bounded(0.1, 0.0, 1.0)  # p_attack: share of every batch triggered and relabelled
    cross_rate: float = bounded(0.1, 0.0, 1.0)  # p_cross: share of every batch given another image's trigger
    lambda_div: float = bounded(1.0, 0.0)
    lambda_norm: float = bounded(100.0, 0.0)
    mask_density: float = bounded(0.032, 0.0, 1.0)
    mask_epochs: int = bounded(25, 0)  # mask generator pre-training, passes over the training set
    lr_mask: float = bounded(0.01, 0.0)
    mask_milestones: list[float] = field(default_factory=lambda: [0.4, 0.8])  # of mask pre-training
    lr_pattern: float = bounded(0.01, 0.0)
    pattern_milestones: list[float] = field(default_factory=lambda: [1 / 3, 1 / 2, 2 / 3, 5 / 6])  # of training
    width: int = bounded(32, 1)  # channels of the generators' first level (doubling per level)
    depth: int = bounded(3, 1, 8)  # encoder levels (each halves the resolution)
    init_seed: int = bounded(0, lo=0)  # the generators' initial weights

    poisons_in_hook: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.poison_rate + self.cross_rate > 1:
            raise ConfigError(
                f"InputAware.poison_rate + cross_rate = {self.poison_rate + self.cross_rate} is out of range: "
                "they are shares of the same batch (allowed at most 1)"
            )

    # --- the generators -------------------------------------------------------------------------------

    def build(self, channels: int, device: torch.device) -> None:
        """Fresh pattern and mask generators for `channels`-channel images, initialised from `init_seed`."""
        w, d = self.width, self.depth
        self.pattern_net = seeded(lambda: EncoderDecoder(channels, channels, w, d, False), self.init_seed).to(device)
        self.mask_net = seeded(lambda: EncoderDecoder(channels, 1, w, d, False), self.init_seed + 1).to(device)

    def nets(self) -> tuple[nn.Module, nn.Module]:
        pattern, mask = getattr(self, "pattern_net", None), getattr(self, "mask_net", None)
        if pattern is None or mask is None:
            raise ConfigError("InputAware has no generators yet: prepare(ctx) builds them (or the cache restores them)")
        return pattern, mask

    def pattern(self, x: Tensor) -> Tensor:
        """Per-image patterns in [0, 1]: (N, C, H, W) float -> (N, C, H, W)."""
        return torch.tanh(self.nets()[0](x)) / 2 + 0.5

    def mask(self, x: Tensor) -> Tensor:
        """Per-image masks in [0, 1], a steep threshold (tanh(20 v - 10)) of the mask network: (N, 1, H, W)."""
        return torch.tanh(self.nets()[1](x) * 20 - 10) / 2 + 0.5

    def triggered(self, x: Tensor, source: Tensor) -> Tensor:
        """`x` with the trigger made for `source` (float images in [0, 1]); source = x is the attack mode."""
        return x + (self.pattern(source) - x) * self.mask(source)

    def apply(self, x: Tensor) -> Tensor:
        pattern, mask = self.nets()
        pattern.to(x.device).eval()
        mask.to(x.device).eval()
        with torch.no_grad():
            return apply_batched(lambda b: to_uint8(self.triggered(b.float() / 255, b.float() / 255) * 255), x)

    # --- life cycle -----------------------------------------------------------------------------------

    def prepare(self, ctx: AttackContext) -> None:
        self.build(ctx.train.x.shape[1], ctx.device)
        sample = to_input(ctx.train.x[:CALIBRATION_IMAGES].to(ctx.device))
        for net in self.nets():
            calibrate_norms(net, sample)

    def pretrain_masks(self, ctx: AttackContext) -> None:
        """Stage 1 of the paper: the mask generator alone, sparse (norm) and diverse, on clean images."""
        _, mask_net = self.nets()
        data = ctx.train.to(ctx.device)
        batch = ctx.recipe.batch_size
        steps = self.mask_epochs * max(1, len(data) // batch)
        opt = torch.optim.Adam(mask_net.parameters(), lr=self.lr_mask, betas=(0.5, 0.9))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, step_decay(self.mask_milestones, steps))
        gen = torch.Generator(ctx.device).manual_seed(self.init_seed)
        mask_net.train()
        with Progress("dynamic mask generator", self.mask_epochs, logger=log) as progress:
            for _ in range(self.mask_epochs):
                for x, _ in epoch_batches(data, batch, ctx.augment, gen, drop_last=True):
                    partners = x.roll(1, 0)  # the batch is shuffled: each image is paired with a random other
                    m1 = self.mask(x)
                    m2 = m1.roll(1, 0)  # the partners' masks: the same batch, so the same forward pass
                    norm = torch.relu(m1 - self.mask_density).mean()
                    loss = self.lambda_norm * norm + self.lambda_div * diversity_loss(x, partners, m1, m2)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                progress.update(lambda loss=loss: {"loss": loss.item()})
        mask_net.eval().requires_grad_(False)

    def train_hook(self, ctx: AttackContext) -> TrainHook:
        recipe = self.adjust_recipe(ctx.recipe)
        total = recipe.epochs * max(1, len(ctx.train) // recipe.batch_size)
        return InputAwareHook(self, ctx, total)

    def trigger_state(self) -> dict[str, Tensor]:
        pattern, mask = self.nets()
        return {**module_state("pattern", pattern), **module_state("mask", mask)}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        key = "pattern.down.0.0.0.weight"  # the first conv: its input channels are the images'
        if key not in state:
            raise ConfigError(f"InputAware trigger state lacks the generators; the cache holds {sorted(state)[:4]}")
        device = state[key].device
        self.build(int(state[key].shape[1]), device)
        pattern, mask = self.nets()
        load_module_state("pattern", pattern, state, "InputAware")
        load_module_state("mask", mask, state, "InputAware")
        pattern.eval()
        mask.eval().requires_grad_(False)


class InputAwareHook(TrainHook):
    """Attack + cross + clean samples in every batch; trains the pattern generator alongside the classifier."""

    def __init__(self, attack: InputAware, ctx: AttackContext, total_steps: int) -> None:
        self.attack, self.ctx, self.num_classes = attack, ctx, ctx.num_classes
        pattern, _ = attack.nets()
        self.opt = torch.optim.Adam(pattern.parameters(), lr=attack.lr_pattern, betas=(0.5, 0.9))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, step_decay(attack.pattern_milestones, total_steps))
        self.last_diversity = torch.full((), float("nan"))

    def start(self, model: nn.Module) -> None:
        self.attack.pretrain_masks(self.ctx)
        self.attack.nets()[0].train()

    def batch(self, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        a = self.attack
        n_bd, n_cross = int(a.poison_rate * len(x)), int(a.cross_rate * len(x))
        n = n_bd + n_cross
        if n == 0:
            return x, y
        partners = x.roll(1, 0)  # shuffled batch: each cross image borrows a random other image's trigger
        sources = torch.cat([x[:n_bd], partners[n_bd:n]])
        patterns = a.pattern(sources)
        with torch.no_grad():
            masks = a.mask(sources)
        mixed = quantise(x[:n] + (patterns - x[:n]) * masks)
        k = min(n_bd, n_cross)
        if a.lambda_div > 0 and k > 0:
            div = diversity_loss(x[:k], partners[n_bd : n_bd + k], patterns[:k], patterns[n_bd : n_bd + k])
            (a.lambda_div * div).backward(retain_graph=True)  # the generator's own loss; CE joins it later
            self.last_diversity = div.detach()
        labels = torch.cat([a.target_labels(y[:n_bd], self.num_classes), y[n_bd:]])
        return torch.cat([mixed, x[n:]]), labels

    def after_step(self, model: nn.Module, step: int) -> None:
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()

    def end(self, model: nn.Module) -> None:
        self.attack.nets()[0].eval()
