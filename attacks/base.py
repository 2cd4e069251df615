"""The face every attack shows the harness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from benchmark.errors import ConfigError
from benchmark.validation import Checked, bounded


@dataclass
class Attack(Checked):
    """Common parameters: the target class, the fraction of training images poisoned, the label mode.

    `poison_rate` is a fraction of the whole training set. all2one sends every triggered image to
    `target`; all2all sends class y to (y + 1) mod K. Clean-label attacks (`clean_label = True`)
    poison only target-class images and keep their labels.
    """

    target: int = bounded(0, lo=0)
    poison_rate: float = bounded(0.1, 0.0, 1.0)
    label_mode: Literal["all2one", "all2all"] = "all2one"

    clean_label: ClassVar[bool] = False

    def apply(self, x: Tensor) -> Tensor:
        """Stamp the trigger: (N, C, H, W) uint8 -> (N, C, H, W) uint8, same device."""
        raise NotImplementedError

    def target_labels(self, y: Tensor, num_classes: int) -> Tensor:
        """The label a triggered image of true class `y` should be classified as."""
        if self.label_mode == "all2all":
            return (y + 1) % num_classes
        return torch.full_like(y, self.target)

    def check_dataset(self, num_classes: int) -> None:
        """Fail early when the attack cannot apply to a dataset with `num_classes` classes."""
        if self.target >= num_classes:
            raise ConfigError(
                f"attack.target={self.target} is out of range: the dataset has {num_classes} classes "
                f"(allowed 0..{num_classes - 1})"
            )
        if self.clean_label and self.label_mode == "all2all":
            raise ConfigError(f"{type(self).__name__} is clean-label: label_mode must be 'all2one'")
