"""Shared poisoning: which training images get the trigger, their new labels, and the triggered test set.

Done once here for every attack, so attacks only define how a trigger looks. Training images fall in
three groups: poisoned (training trigger, relabelled unless the attack is clean-label), cover
(cover trigger, label kept: WaNet's noise mode, A-Blend's regularisation samples) and untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.base import Attack
from benchmark.core.data import ImageSet, TriggeredSet
from benchmark.core.errors import ConfigError

CHUNK = 4096  # images per trigger call: bounds peak memory on 224x224 datasets


@dataclass(frozen=True)
class PoisonedTrain:
    """The poisoned training set, the indices that carry the backdoor and the cover indices (label kept)."""

    images: ImageSet
    index: Tensor
    cover: Tensor


def _chunked(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    if len(x) == 0:
        return x.clone()
    return torch.cat([fn(x[i : i + CHUNK]) for i in range(0, len(x), CHUNK)])


def apply_chunked(attack: Attack, x: Tensor) -> Tensor:
    """The test-time trigger over a whole set, in chunks."""
    return _chunked(attack.apply, x)


def choose_poison(y: Tensor, attack: Attack, gen: torch.Generator) -> Tensor:
    """Indices of the training images to poison: `poison_rate * N` of the eligible ones, at random.

    Eligible: target-class images for clean-label attacks; non-target images for all2one (so every
    poisoned sample teaches the backdoor); every image for all2all. A `poison_rate` of None (allowed
    by clean-label attacks) poisons every eligible image.
    """
    if attack.clean_label:
        eligible = (y == attack.target).nonzero().squeeze(1)
    elif attack.label_mode == "all2one":
        eligible = (y != attack.target).nonzero().squeeze(1)
    else:
        eligible = torch.arange(len(y))
    n = len(eligible) if attack.poison_rate is None else round(attack.poison_rate * len(y))
    if n > len(eligible):
        raise ConfigError(
            f"attack.poison_rate={attack.poison_rate} asks for {n} poisoned images but only {len(eligible)} "
            f"are eligible (allowed at most {len(eligible) / len(y):.4f})"
        )
    return eligible[torch.randperm(len(eligible), generator=gen)[:n]]


def choose_cover(y: Tensor, attack: Attack, poisoned: Tensor, gen: torch.Generator) -> Tensor:
    """Indices of cover samples: `cover_fraction() * N` images of any class, disjoint from `poisoned`.

    Draws from `gen` only when the attack has cover samples, so other attacks poison exactly as before.
    """
    n = round(attack.cover_fraction() * len(y))
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    free = torch.ones(len(y), dtype=torch.bool)
    free[poisoned] = False
    candidates = free.nonzero().squeeze(1)
    if n > len(candidates):
        raise ConfigError(
            f"{type(attack).__name__} asks for {n} cover images but only {len(candidates)} are left after "
            f"{len(poisoned)} poisoned ones (allowed cover fraction at most {len(candidates) / len(y):.4f})"
        )
    return candidates[torch.randperm(len(candidates), generator=gen)[:n]]


def poison_train_split(train: ImageSet, attack: Attack, num_classes: int, gen: torch.Generator) -> PoisonedTrain:
    """Poison the training set: triggered + relabelled samples, then triggered cover samples that keep labels."""
    index = choose_poison(train.y, attack, gen)
    x, y = train.x.clone(), train.y.clone()
    x[index] = _chunked(lambda b: attack.apply_train(b, gen), train.x[index])
    if not attack.clean_label:
        y[index] = attack.target_labels(train.y[index], num_classes)
    cover = choose_cover(train.y, attack, index, gen)
    x[cover] = _chunked(lambda b: attack.apply_cover(b, gen), train.x[cover])
    return PoisonedTrain(ImageSet(x, y), index, cover)


def poison_for_training(train: ImageSet, attack: Attack, num_classes: int, gen: torch.Generator) -> PoisonedTrain:
    """What the backdoored model trains on: the shared poisoning, or the clean set (nothing poisoned, no
    draw from `gen`) when the attack's training hook triggers a share of every batch itself."""
    if attack.poisons_in_hook:
        none = torch.zeros(0, dtype=torch.long)
        return PoisonedTrain(train, none, none)
    return poison_train_split(train, attack, num_classes, gen)


def poison_train(train: ImageSet, attack: Attack, num_classes: int, gen: torch.Generator) -> tuple[ImageSet, Tensor]:
    """The poisoned training set and the indices that carry the backdoor (cover samples not included)."""
    out = poison_train_split(train, attack, num_classes, gen)
    return out.images, out.index


def triggered_test(test: ImageSet, attack: Attack, num_classes: int) -> TriggeredSet:
    """Every test image whose true label differs from its attack target, with the test-time trigger stamped."""
    wanted = attack.target_labels(test.y, num_classes)
    keep = (wanted != test.y).nonzero().squeeze(1)
    x = apply_chunked(attack, test.x[keep])
    return TriggeredSet(ImageSet(x, wanted[keep]), test.y[keep])
