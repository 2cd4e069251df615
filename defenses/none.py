"""No defense: the baseline row of every table."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from defenses.base import Defense, DefenseData, DefenseOutput


@dataclass
class NoDefense(Defense):
    def __call__(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> DefenseOutput:
        return DefenseOutput(model=model, info={"diagnostics": {}})  # no mechanism, no premise (n/a)
