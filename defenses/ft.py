"""FT — plain fine-tuning on the clean defense data: the simplest baseline every defense must beat.

The harness's training loop (benchmark.core.training.train_classifier) does the work, with the recipe below;
the model is a copy, so the backdoored original stays untouched.

Precision: forward passes and loss autocast (bf16 on CUDA by default); weights and optimiser stay fp32.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from benchmark.core.premise import chance_bar
from benchmark.core.training import TrainHook, TrainRecipe, train_classifier
from benchmark.core.validation import bounded
from defenses.base import Defense, DefenseData, DefenseOutput


@dataclass
class FineTuning(Defense):
    epochs: int = bounded(100, 1)
    batch_size: int = bounded(256, 1)
    lr: float = bounded(0.01, 0.0)
    momentum: float = bounded(0.9, 0.0, 1.0)
    weight_decay: float = bounded(5e-4, 0.0)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"

    def recipe(self) -> TrainRecipe:
        return TrainRecipe(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=False,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            warmup_epochs=0.0,
        )

    def finetune(
        self, model: nn.Module, data: DefenseData, gen: torch.Generator, hook: TrainHook | None = None
    ) -> dict[str, Any]:
        """Fine-tune `model` in place on all the defense data; returns what to record."""
        start = time.perf_counter()
        history = train_classifier(
            model,
            data.images,
            self.recipe(),
            data.augment,
            gen,
            hook=hook,
            desc="fine-tuning",
            drop_last=False,
            precision=data.precision,
            compilation=data.compilation,
        )
        return {
            "finetune_epochs": self.epochs,
            "finetune_seconds": round(time.perf_counter() - start, 3),
            "final_train_acc": round(history[-1]["train_acc"], 4),
            "final_train_loss": round(history[-1]["loss"], 4),
            "acc_per_epoch": [round(h["train_acc"], 4) for h in history],  # running accuracy on the defense data
        }

    def __call__(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> DefenseOutput:
        tuned = copy.deepcopy(model)
        info = self.finetune(tuned, data, gen)
        info["diagnostics"] = {"acc_per_epoch": info["acc_per_epoch"], "chance_bar": chance_bar(data.num_classes)}
        return DefenseOutput(model=tuned.eval(), info=info)
