"""Shared poisoning: which training images get the trigger, their new labels, and the triggered test set.

Done once here for every attack, so attacks only define how a trigger looks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.base import Attack
from benchmark.datasets import ImageSet
from benchmark.errors import ConfigError

CHUNK = 4096  # images per trigger call: bounds peak memory on 224x224 datasets


@dataclass(frozen=True)
class TriggeredSet:
    """Triggered test images with the label the attacker wants (`images.y`) and their true label."""

    images: ImageSet
    true_y: Tensor


def apply_chunked(attack: Attack, x: Tensor) -> Tensor:
    if len(x) == 0:
        return x.clone()
    return torch.cat([attack.apply(x[i : i + CHUNK]) for i in range(0, len(x), CHUNK)])


def choose_poison(y: Tensor, attack: Attack, gen: torch.Generator) -> Tensor:
    """Indices of the training images to poison: `poison_rate * N` of the eligible ones, at random.

    Eligible: target-class images for clean-label attacks; non-target images for all2one (so every
    poisoned sample teaches the backdoor); every image for all2all.
    """
    if attack.clean_label:
        eligible = (y == attack.target).nonzero().squeeze(1)
    elif attack.label_mode == "all2one":
        eligible = (y != attack.target).nonzero().squeeze(1)
    else:
        eligible = torch.arange(len(y))
    n = round(attack.poison_rate * len(y))
    if n > len(eligible):
        raise ConfigError(
            f"attack.poison_rate={attack.poison_rate} asks for {n} poisoned images but only {len(eligible)} "
            f"are eligible (allowed at most {len(eligible) / len(y):.4f})"
        )
    return eligible[torch.randperm(len(eligible), generator=gen)[:n]]


def poison_train(train: ImageSet, attack: Attack, num_classes: int, gen: torch.Generator) -> tuple[ImageSet, Tensor]:
    """The poisoned training set and the indices that were poisoned."""
    index = choose_poison(train.y, attack, gen)
    x, y = train.x.clone(), train.y.clone()
    x[index] = apply_chunked(attack, train.x[index])
    if not attack.clean_label:
        y[index] = attack.target_labels(train.y[index], num_classes)
    return ImageSet(x, y), index


def triggered_test(test: ImageSet, attack: Attack, num_classes: int) -> TriggeredSet:
    """Every test image whose true label differs from its attack target, with the trigger stamped."""
    wanted = attack.target_labels(test.y, num_classes)
    keep = (wanted != test.y).nonzero().squeeze(1)
    x = apply_chunked(attack, test.x[keep])
    return TriggeredSet(ImageSet(x, wanted[keep]), test.y[keep])
