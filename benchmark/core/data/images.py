"""The image-set types every floor shares: whole uint8 tensors, the three splits, a triggered test set.

Every loader returns `(train, test)` as `ImageSet`s of (N, C, H, W) uint8 images and int64 labels;
`make_splits` then sets aside the reserve pool that defense data is drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.core.errors import ConfigError


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) uint8 with labels (N,) int64, kept together so they are indexed together."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(self.x.shape)} {self.x.dtype}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"labels {tuple(self.y.shape)} do not match {self.x.shape[0]} images")

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index: Tensor) -> ImageSet:
        return ImageSet(self.x[index], self.y[index])

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class DataSplits:
    """The three disjoint parts of a dataset; `reserve` is clean and never used for backdoor training."""

    train: ImageSet
    reserve: ImageSet
    test: ImageSet
    num_classes: int


@dataclass(frozen=True)
class TriggeredSet:
    """Triggered test images with the label the attacker wants (`images.y`) and their true label."""

    images: ImageSet
    true_y: Tensor


def make_splits(
    train: ImageSet,
    test: ImageSet,
    num_classes: int,
    reserve: int,
    split_seed: int,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> DataSplits:
    """Hold out `reserve` clean training images (fixed by `split_seed`, so every cell shares them)."""
    if reserve >= len(train):
        raise ConfigError(f"dataset.reserve={reserve} must be smaller than the {len(train)} training images")
    found = int(torch.cat([train.y, test.y]).max()) + 1
    if found > num_classes:
        raise ConfigError(f"dataset.num_classes={num_classes} but labels go up to {found - 1}")
    gen = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(len(train), generator=gen)
    reserve_set = train.subset(order[:reserve])
    rest = order[reserve:]
    if train_limit is not None:
        rest = rest[:train_limit]
    if test_limit is not None and test_limit < len(test):
        test = test.subset(torch.randperm(len(test), generator=gen)[:test_limit])
    return DataSplits(train.subset(rest), reserve_set, test, num_classes)
