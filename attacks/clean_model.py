"""Shared pieces of the attacks that start from a clean model (TrojanNN, CL, FC, AWP).

- `penultimate`: the input of the classifier head (the last `nn.Linear`), the "late layer" whose neurons
  TrojanNN excites and whose features Poison Frogs collides; found by module type, so it works for every
  architecture in `benchmark.core.archs` without naming layers.
- `StartFromClean`: a training hook that loads the clean model's weights before the first step, so the
  harness's one training loop fine-tunes (retrains) the clean model instead of training from scratch.
- `ProjectToClean`: the same, plus a projection of every parameter back into an L-inf ball around the
  clean weights after each step (adversarial weight perturbation).
- `Retrained`: the parameters and life cycle shared by attacks whose backdoored model is the clean model
  retrained on the poisoned set (or, optionally, a model trained from scratch on it).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from attacks.base import Attack, AttackContext
from benchmark.core.archs import classifier_head
from benchmark.core.errors import ConfigError
from benchmark.core.training import TrainHook, TrainRecipe
from benchmark.core.validation import bounded


def head(model: nn.Module) -> nn.Linear:
    """The classifier head whose input features the clean-model attacks read."""
    return classifier_head(model, "the attack cannot take features from it")


def penultimate(model: nn.Module, x: Tensor) -> Tensor:
    """Features entering the classifier head for float images `x` in [0, 1]: (N, C, H, W) -> (N, D)."""
    captured: list[Tensor] = []
    handle = head(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0].flatten(1)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with gradients off: crafting differentiates w.r.t. inputs only,
    and the caller's model (possibly shared, e.g. by a cache) is left as it was."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class StartFromClean(TrainHook):
    """Load the clean model's weights (and BN statistics) into the model before training starts."""

    def __init__(self, clean: nn.Module) -> None:
        self.clean = clean

    def start(self, model: nn.Module) -> None:
        model.load_state_dict(self.clean.state_dict())


class HeadOnly(StartFromClean):
    """Start from the clean weights and retrain only the classifier head on frozen features (transfer learning).

    The feature extractor stays in eval mode (its BatchNorm statistics frozen too) and gets no gradients;
    at the end every parameter is trainable again, so defenses can fine-tune the result.
    """

    def start(self, model: nn.Module) -> None:
        super().start(model)
        self.model = model
        trainable = {id(p) for p in head(model).parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)

    def batch(self, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        self.model.eval()  # the loop sets train mode every epoch; frozen features keep their statistics
        return x, y

    def end(self, model: nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(True)


class ProjectToClean(StartFromClean):
    """Start from the clean weights and keep every parameter within `eps` (L-inf) of them after each step.

    BatchNorm running statistics are buffers, not parameters: they follow the perturbed weights.
    """

    def __init__(self, clean: nn.Module, eps: float) -> None:
        super().__init__(clean)
        self.eps = eps
        self.anchors: list[Tensor] = []

    def start(self, model: nn.Module) -> None:
        super().start(model)
        self.anchors = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        for p, a in zip(model.parameters(), self.anchors, strict=True):
            p.copy_(torch.minimum(torch.maximum(p, a - self.eps), a + self.eps))


def finetune_recipe(recipe: TrainRecipe, epochs: int, lr: float, **changes: object) -> TrainRecipe:
    """`recipe` shortened to a fine-tune: `epochs` at peak rate `lr`, no warm-up (the start is trained)."""
    return dataclasses.replace(recipe, epochs=epochs, lr=lr, warmup_epochs=0.0, **changes)


@dataclass
class Retrained(Attack):
    """An attack whose trigger is crafted against a clean model, then retrains that model on the poisoned set.

    `retrain: finetune` (default) starts the harness's training loop from the clean weights and runs
    `finetune_epochs` at `finetune_lr` with the cell's schedule; `head` does the same but retrains only
    the classifier head on the clean model's frozen features (transfer learning); `scratch` trains a new
    model on the poisoned set with the cell's full recipe (what BackdoorBench does for TrojanNN).
    """

    retrain: Literal["finetune", "head", "scratch"] = "finetune"
    finetune_epochs: int = bounded(2, 1)
    finetune_lr: float = bounded(0.01, 0.0)

    def prepare(self, ctx: AttackContext) -> None:
        self.clean = frozen_copy(ctx.clean_model())

    def clean_or_fail(self) -> nn.Module:
        """The clean model `prepare` stored; an attack restored from the cache has none and needs none."""
        clean = getattr(self, "clean", None)
        if clean is None:
            raise ConfigError(f"{type(self).__name__} needs prepare(ctx) (the clean model) before poisoning")
        return clean

    def train_hook(self, ctx: AttackContext) -> TrainHook | None:
        if self.retrain == "scratch":
            return None
        return (HeadOnly if self.retrain == "head" else StartFromClean)(self.clean_or_fail())

    def adjust_recipe(self, recipe: TrainRecipe) -> TrainRecipe:
        if self.retrain == "scratch":
            return recipe
        return finetune_recipe(recipe, self.finetune_epochs, self.finetune_lr)
