"""Adversarial weight perturbation (Garg, Kumar, Goel & Liang, CIKM 2020, "Can adversarial weight
perturbations inject neural backdoors?").

The backdoor is implanted by a small perturbation of a clean model's weights, not by training a model:
starting from the clean weights, projected gradient descent on the classification loss of a poisoned
set (clean images keep their labels, `poison_rate` of them carry the trigger and the target label), with
every parameter projected back into an L-inf ball of radius `eps` around its clean value after each step.
Here the harness's training loop runs the descent (SGD at `lr` for `epochs` passes over the poisoned
training set, no weight decay, constant rate) and the training hook loads the clean weights and projects.
The trigger is the BadNets checkerboard (the paper uses a fixed patch trigger).

The paper's clean term matches the original model's predictions; here it uses the true labels, which the
clean model mostly predicts.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.badnets import BadNets
from attacks.base import AttackContext
from attacks.clean_model import ProjectToClean, finetune_recipe, frozen_copy
from benchmark.core.errors import ConfigError
from benchmark.core.training import TrainHook, TrainRecipe
from benchmark.core.validation import bounded


@dataclass
class AWP(BadNets):
    eps: float = bounded(0.02, 0.0)  # L-inf bound on each parameter's change from its clean value
    epochs: int = bounded(3, 1)  # passes of projected descent over the poisoned training set
    lr: float = bounded(0.05, 0.0)  # SGD step size (the cell's momentum)

    def prepare(self, ctx: AttackContext) -> None:
        self.clean = frozen_copy(ctx.clean_model())

    def train_hook(self, ctx: AttackContext) -> TrainHook | None:
        clean = getattr(self, "clean", None)
        if clean is None:
            raise ConfigError("AWP needs prepare(ctx) (the clean model) before training")
        return ProjectToClean(clean, self.eps)

    def adjust_recipe(self, recipe: TrainRecipe) -> TrainRecipe:
        return finetune_recipe(recipe, self.epochs, self.lr, weight_decay=0.0, schedule="constant")
