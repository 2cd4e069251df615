"""The face every defense shows the harness."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from benchmark.core.augment import AugmentSpec
from benchmark.core.compilation import EAGER, Compilation
from benchmark.core.data import ImageSet
from benchmark.core.precision import AUTO, Precision
from benchmark.core.validation import Checked

Learned = tuple[dict[str, Tensor], dict[str, Any]]  # learned tensors (e.g. per-channel masks) and their record


class LearnedStore(Protocol):
    """Where a defense keeps what it learned, so that cells differing only in knobs applied afterwards (a
    pruning threshold, the selection rule, the curve) learn it once. The harness's implementation keys an
    entry by the defense, its learning knobs and the exact model, data and random state it was handed
    (benchmark.weights.learned_cache); `shapes` names the tensors `learn` returns and their shapes, so that a
    damaged or foreign entry is told apart."""

    def recall(
        self,
        kind: str,
        knobs: dict[str, Any],
        model: nn.Module,
        data: DefenseData,
        gen: torch.Generator,
        learn: Callable[[], Learned],
        shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> Learned: ...


@dataclass(frozen=True)
class DefenseData:
    """What a defense may use: clean images (on the compute device), their augmentation, the class count,
    the precision its forward passes run in, (optionally) a store for what it learned, and whether its hot loops
    run compiled."""

    images: ImageSet
    augment: AugmentSpec
    num_classes: int
    precision: Precision = AUTO  # the run's precision: every forward pass of the defense autocasts through it
    store: LearnedStore | None = None  # None: learn every time (the method tests)
    compilation: Compilation = EAGER  # the run's `compile`: how RNP and ANP run their masked model

    @property
    def device(self) -> torch.device:
        return self.images.x.device


@dataclass
class CurvePoint:
    """One candidate on a defense's curve (e.g. one pruning threshold), built only when evaluated.

    `params` says what the point is (threshold, neurons pruned); points with the same `key` are
    the same model, so the harness evaluates them once.
    """

    params: dict[str, Any]
    build: Callable[[], nn.Module]
    key: Any = None


@dataclass
class DefenseOutput:
    model: nn.Module
    info: dict[str, Any]
    curve: list[CurvePoint] = field(default_factory=list)


@dataclass
class Defense(Checked):
    """Parameters are dataclass fields (validated at construction); `__call__` runs the defense.

    Implementations must not modify `model` in place: the harness keeps the original for reference.
    """

    def __call__(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> DefenseOutput:
        raise NotImplementedError
