"""The face every attack shows the harness."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from benchmark.core.augment import AugmentSpec
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError
from benchmark.core.training import TrainHook, TrainRecipe
from benchmark.core.validation import Checked, bounded


@dataclass
class AttackContext:
    """What an attack may use before and while the backdoored model trains — never test data.

    `clean_model()` trains (or loads from the model cache) a clean model of the cell's architecture on
    the clean training split: TrojanNN, CL, FC and AWP start from one. `new_model()` builds an untrained
    one. Both live on `device`.
    """

    train: ImageSet
    num_classes: int
    augment: AugmentSpec
    recipe: TrainRecipe
    device: torch.device
    gen: torch.Generator
    clean_model: Callable[[], nn.Module]
    new_model: Callable[[], nn.Module]


@dataclass
class Attack(Checked):
    """Common parameters: the target class, the fraction of training images poisoned, the label mode.

    `poison_rate` is a fraction of the whole training set. all2one sends every triggered image to
    `target`; all2all sends class y to (y + 1) mod K. Clean-label attacks (`clean_label = True`)
    poison only target-class images and keep their labels.

    Three triggers, so that attacks whose training trigger differs from the test one (A-Blend) or that
    add label-keeping "cover" samples (WaNet's noise mode, A-Blend's regularisation samples) share the
    poisoning code: `apply` (test time, deterministic), `apply_train` (poisoned training images) and
    `apply_cover` (a `cover_fraction()` of the training set, triggered but keeping their labels).
    Any randomness at poisoning time comes from the generator passed in.

    Attacks that learn their trigger or start from a clean model use the life cycle of a trained
    backdoored model: `prepare(ctx)` once before poisoning, `train_hook(ctx)` to join the training loop,
    `adjust_recipe` to change the recipe, and `trigger_state`/`load_trigger_state` so that what they
    learned is cached with the model (a cached model comes back with its trigger, without `prepare`).
    """

    target: int = bounded(0, lo=0)
    poison_rate: float = bounded(0.1, 0.0, 1.0)
    label_mode: Literal["all2one", "all2all"] = "all2one"

    clean_label: ClassVar[bool] = False
    # True for attacks whose training hook triggers a share of every batch itself (Input-aware, LIRA):
    # the training set then stays clean (`attacks.poison.poison_for_training`), and `poison_rate` is that
    # per-batch share. `poison_train_split` still poisons statically with `apply_train` (e.g. to export a set).
    poisons_in_hook: ClassVar[bool] = False

    def apply(self, x: Tensor) -> Tensor:
        """Stamp the test-time trigger: (N, C, H, W) uint8 -> (N, C, H, W) uint8, same device."""
        raise NotImplementedError

    def apply_train(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The trigger on poisoned training images; the test-time one unless the attack varies it."""
        return self.apply(x)

    def cover_fraction(self) -> float:
        """Fraction of the whole training set that gets `apply_cover` but keeps its label (0: none)."""
        return 0.0

    def apply_cover(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The trigger on cover samples (label kept); by default the training trigger."""
        return self.apply_train(x, gen)

    def prepare(self, ctx: AttackContext) -> None:
        """Learn or fit whatever the trigger needs, before the training set is poisoned (default: nothing)."""

    def train_hook(self, ctx: AttackContext) -> TrainHook | None:
        """A hook into the training loop for attacks trained jointly with the model (default: none)."""
        return None

    def adjust_recipe(self, recipe: TrainRecipe) -> TrainRecipe:
        """The recipe the backdoored model trains with; attacks that fine-tune a clean model change it."""
        return recipe

    def trigger_state(self) -> dict[str, Tensor]:
        """Tensors the trigger learned (saved with the cached model); empty for fixed triggers."""
        return {}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        """Restore what `trigger_state` returned; a fixed-trigger attack accepts only an empty state."""
        if state:
            raise ConfigError(f"{type(self).__name__} has a fixed trigger but the cache holds {sorted(state)}")

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


def to_uint8(x: Tensor) -> Tensor:
    """Round and clip a float image batch back to uint8."""
    return x.round().clamp(0, 255).to(torch.uint8)


def uniform_pattern(seed: int, channels: int, base: int, h: int, w: int, device: torch.device) -> Tensor:
    """A fixed uniform-noise image in [0, 255], drawn at `base` x `base` from `seed` and resized to (h, w).

    Drawn on the CPU so the pattern is the same on every device; nearest resizing keeps it noise-like
    and makes its blocks grow with the image, as BadNets' cells do. Returns (1, C, h, w) float32.
    """
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(1, channels, base, base, generator=gen) * 255
    return torch.nn.functional.interpolate(small, size=(h, w), mode="nearest-exact").to(device)
