"""LIRA (Doan, Lao, Zhao & Li, ICCV 2021, "LIRA: Learnable, Imperceptible and Robust Backdoor Attacks").

A generator T makes an additive, L-inf-bounded trigger: x' = clip(x + eps * tanh(T(x)), 0, 1).

Stage 1 (the first `stage1_fraction` of training): T and the classifier f are learned by alternating
stochastic updates on each batch, inside the harness's one training loop (the hook):
  - generator step (in `batch`): min_T CE(f_{theta'}(x'), target), where theta' = theta - lr * grad of
    the classifier loss below is a one-step look-ahead of the classifier (the authors' second-order
    update; `lookahead: false` uses the current theta, as BackdoorBench's port does); Adam on T.
  - classifier step (the loop's own SGD): alpha * CE(f(x), y) + (1 - alpha) * CE(f(x'), target). The hook
    appends a triggered copy of the first images of the batch, so that the triggered copies carry a
    `poison_rate` share of the loss: poison_rate = 1 - alpha (the authors' alpha 0.5: every image and
    its triggered copy weigh the same).
Stage 2 (the rest): T is fixed and the classifier is fine-tuned on the same mix, with `test_eps`.

Triggered images are rounded to the uint8 grid (straight-through) as the test trigger `apply` is, so
the backdoor is not learned from sub-level noise that rounding erases.
Simplification: the authors' classifier step uses a copy of T refreshed once per epoch; here it uses T
as it stands (detached).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from attacks.base import Attack, AttackContext, to_uint8
from attacks.generators import (
    CALIBRATION_IMAGES,
    EncoderDecoder,
    apply_batched,
    calibrate_norms,
    load_module_state,
    module_state,
    quantise,
    seeded,
)
from benchmark.core.archs import to_input
from benchmark.core.errors import ConfigError
from benchmark.core.training import TrainHook, TrainRecipe, lr_lambda
from benchmark.core.validation import bounded


@dataclass
class LIRA(Attack):
    poison_rate: float = bounded(0.5, 0.0, 0.5)  # share of the loss on triggered copies = 1 - alpha
    eps: float = bounded(0.01, 0.0, 1.0)  # L-inf bound of the stage-1 trigger, in [0, 1] pixel units
    test_eps: float | None = bounded(None, 0.0, 1.0)  # stage 2 and test time; null: eps
    lr_generator: float = bounded(1e-4, 0.0)  # Adam on T (lr_atk)
    stage1_fraction: float = bounded(1 / 3, 0.0, 1.0)  # share of the training steps that train T
    lookahead: bool = True
    width: int = bounded(64, 1)  # U-Net channels at full resolution (doubling per level)
    depth: int = bounded(3, 1, 8)
    init_seed: int = bounded(0, lo=0)

    poisons_in_hook: ClassVar[bool] = True

    @property
    def final_eps(self) -> float:
        return self.eps if self.test_eps is None else self.test_eps

    def build(self, channels: int, device: torch.device) -> None:
        build = lambda: EncoderDecoder(channels, channels, self.width, self.depth, skips=True)  # noqa: E731
        self.generator = seeded(build, self.init_seed).to(device)

    def net(self) -> nn.Module:
        net = getattr(self, "generator", None)
        if net is None:
            raise ConfigError("LIRA has no trigger generator yet: prepare(ctx) builds it (or load it from the cache)")
        return net

    def triggered(self, x: Tensor, eps: float) -> Tensor:
        """x + eps * tanh(T(x)), clipped to [0, 1]: float images -> float images (differentiable in T)."""
        return (x + eps * torch.tanh(self.net()(x))).clamp(0, 1)

    def apply(self, x: Tensor) -> Tensor:
        self.net().to(x.device).eval()
        with torch.no_grad():
            return apply_batched(lambda b: to_uint8(self.triggered(b.float() / 255, self.final_eps) * 255), x)

    def prepare(self, ctx: AttackContext) -> None:
        self.build(ctx.train.x.shape[1], ctx.device)
        calibrate_norms(self.net(), to_input(ctx.train.x[:CALIBRATION_IMAGES].to(ctx.device)))

    def train_hook(self, ctx: AttackContext) -> TrainHook:
        return LiraHook(self, ctx.num_classes, self.adjust_recipe(ctx.recipe), len(ctx.train))

    def trigger_state(self) -> dict[str, Tensor]:
        return module_state("generator", self.net())

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        key = "generator.down.0.0.0.weight"
        if key not in state:
            raise ConfigError(f"LIRA trigger state needs the generator's weights; the cache holds {sorted(state)[:4]}")
        self.build(int(state[key].shape[1]), state[key].device)
        load_module_state("generator", self.net(), state, "LIRA")
        self.net().eval()


class LiraHook(TrainHook):
    """Stage 1: a generator step per batch, then the classifier trains on clean + triggered copies; stage 2: T fixed."""

    def __init__(self, attack: LIRA, num_classes: int, recipe: TrainRecipe, n_train: int) -> None:
        self.attack, self.num_classes = attack, num_classes
        steps_per_epoch = max(1, n_train // recipe.batch_size)
        self.stage1_steps = int(attack.stage1_fraction * recipe.epochs * steps_per_epoch)
        self.lr_at = lr_lambda(recipe, steps_per_epoch)  # the classifier's rate, for the look-ahead
        self.base_lr = recipe.lr
        self.opt = torch.optim.Adam(attack.net().parameters(), lr=attack.lr_generator)
        self.model: nn.Module | None = None

    def start(self, model: nn.Module) -> None:
        self.model = model

    def copies(self, n: int) -> int:
        """Triggered copies appended to a batch of `n`, so that they carry a poison_rate share of the loss."""
        r = self.attack.poison_rate
        return min(n, round(n * r / (1 - r))) if r < 1 else n

    def batch(self, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        a = self.attack
        stage1 = step < self.stage1_steps
        if stage1:
            self.generator_step(x, y, step)
        k = self.copies(len(x))
        net = a.net().eval()
        with torch.no_grad():
            poisoned = quantise(a.triggered(x[:k], a.eps if stage1 else a.final_eps))
        net.train(stage1)
        return torch.cat([x, poisoned]), torch.cat([y, a.target_labels(y[:k], self.num_classes)])

    def generator_step(self, x: Tensor, y: Tensor, step: int) -> None:
        """One Adam step on T towards the target under the classifier after its next (look-ahead) step."""
        assert self.model is not None, "LiraHook.start(model) must run before the first batch"
        a, model = self.attack, self.model
        net = a.net().train()
        target = a.target_labels(y, self.num_classes)
        poisoned = quantise(a.triggered(x, a.eps))
        # Buffers are cloned so these extra forward passes leave the classifier's BN statistics alone.
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        params = dict(model.named_parameters())
        if a.lookahead:
            r = a.poison_rate
            logits = functional_call(model, {**params, **buffers}, (torch.cat([x, poisoned]),))
            loss = (1 - r) * F.cross_entropy(logits[: len(x)], y) + r * F.cross_entropy(logits[len(x) :], target)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            lr = self.base_lr * self.lr_at(step)
            params = {k: p - lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
        logits = functional_call(model, {**params, **buffers}, (poisoned,))
        gen_loss = F.cross_entropy(logits, target)
        self.opt.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(gen_loss, list(net.parameters()))
        for p, g in zip(net.parameters(), grads, strict=True):
            p.grad = g
        self.opt.step()

    def end(self, model: nn.Module) -> None:
        self.attack.net().eval()
