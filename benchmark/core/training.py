"""Training on device-resident uint8 tensors: the one training loop of the harness.

`epoch_batches` is also what defenses iterate over, so every loop shares the same batching and
augmentation; mixed precision comes from `benchmark.core.precision` (bf16 on CUDA by default).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.core.archs import to_input
from benchmark.core.augment import AugmentSpec, random_crop_flip
from benchmark.core.compilation import EAGER, Compilation
from benchmark.core.data import ImageSet
from benchmark.core.precision import AUTO, Precision
from benchmark.core.progress import Progress
from benchmark.core.validation import Checked, bounded

log = logging.getLogger(__name__)


class TrainHook:
    """Lets an attack take part in training without a loop of its own.

    `start` runs before the first step (e.g. load a clean model's weights), `batch` may rewrite each
    batch (float images in [0, 1], labels) — a trigger generator trained jointly can keep its autograd
    graph here, since the loss's backward reaches it — and `after_step` runs after each optimiser step
    (step the generator's optimiser, project weights).
    """

    def start(self, model: nn.Module) -> None:
        """Before the first optimiser step."""

    def batch(self, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """The batch the model trains on at `step`."""
        return x, y

    def after_step(self, model: nn.Module, step: int) -> None:
        """After the optimiser step `step`."""

    def end(self, model: nn.Module) -> None:
        """After the last epoch."""


@dataclass
class TrainRecipe(Checked):
    """How the backdoored model is trained (SGD; `milestones` are fractions of `epochs`)."""

    epochs: int = bounded(60, 1)
    batch_size: int = bounded(256, 1)
    lr: float = bounded(0.1, 0.0)
    momentum: float = bounded(0.9, 0.0, 1.0)
    nesterov: bool = True
    weight_decay: float = bounded(5e-4, 0.0)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: float = bounded(1.0, 0.0)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = bounded(0.1, 0.0, 1.0)
    label_smoothing: float = bounded(0.0, 0.0, 1.0)
    # How training runs, not what it produces (kept out of model cache keys, see RUNTIME_FIELDS):
    eval_every: int = bounded(0, 0)  # test metrics every N epochs for the history (0: never; they cost time)
    compile: bool = False  # torch.compile the forward pass (mode default; the run's `compile` setting also does)


# TrainRecipe fields that do not change the trained model, so cache keys leave them out.
RUNTIME_FIELDS = ("eval_every", "compile")


def epoch_batches(
    data: ImageSet,
    batch_size: int,
    augment: AugmentSpec | None,
    gen: torch.Generator,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One shuffled pass: yields (float images in [0, 1], labels), augmented in whole batches."""
    n = len(data)
    order = torch.randperm(n, device=data.x.device, generator=gen)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        x = data.x[idx]
        if augment is not None:
            x = random_crop_flip(x, augment, gen)
        yield to_input(x), data.y[idx]


def device_sum(device: torch.device, dtype: torch.dtype = torch.float64) -> Tensor:
    """A zero that lives on `device`, for running sums in a hot loop: adding a batch's loss or count to it does not
    wait for the GPU, as `float(loss)` or `int(count)` would each batch; it is read once, when a figure is due.
    fp64 by default, so that a sum of fp32 losses is what Python's float sum of them was."""
    return torch.zeros((), device=device, dtype=dtype)


def lr_lambda(recipe: TrainRecipe, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate factor per optimiser step: linear warm-up, then the chosen schedule."""
    total = recipe.epochs * steps_per_epoch
    warm = int(recipe.warmup_epochs * steps_per_epoch)
    marks = [int(m * total) for m in recipe.milestones]

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if recipe.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        if recipe.schedule == "multistep":
            return recipe.gamma ** sum(step >= m for m in marks)
        return 1.0

    return factor


def train_classifier(
    model: nn.Module,
    data: ImageSet,
    recipe: TrainRecipe,
    augment: AugmentSpec,
    gen: torch.Generator,
    hook: TrainHook | None = None,
    desc: str = "train",
    drop_last: bool = True,
    monitor: Callable[[nn.Module], dict[str, float]] | None = None,
    precision: Precision = AUTO,
    compilation: Compilation = EAGER,
) -> list[dict[str, float]]:
    """Train `model` in place on `data` (on the model's device); returns per-epoch loss and accuracy.

    `hook` lets an attack that learns its trigger take part (see `TrainHook`); the loop itself stays
    the only place that trains. `drop_last=False` keeps the last partial batch: defenses that fine-tune
    on a few hundred images would otherwise skip a large share of them every epoch. `monitor` (e.g. test
    metrics) joins the history every `recipe.eval_every` epochs and after the last; never by default.
    """
    device = data.x.device
    hook = hook or TrainHook()
    hook.start(model)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
        weight_decay=recipe.weight_decay,
    )
    steps_per_epoch = max(1, len(data) // recipe.batch_size if drop_last else math.ceil(len(data) / recipe.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(recipe, steps_per_epoch))
    history, step = [], 0
    if compilation.enabled:
        forward = compilation.wrap(model, device)  # shares `model`'s parameters
    else:
        forward = torch.compile(model) if recipe.compile else model
    progress = Progress(desc, recipe.epochs, logger=log)
    for epoch in range(recipe.epochs):
        model.train()
        total_loss, correct = device_sum(device, torch.float32), device_sum(device, torch.long)
        seen = 0
        for x, y in epoch_batches(data, recipe.batch_size, augment, gen, drop_last=drop_last):
            x, y = hook.batch(x, y, step)
            compilation.step(device)
            with precision.autocast(device):
                logits = forward(x)
                loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hook.after_step(model, step)
            step += 1
            total_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            progress.within(  # a line from inside a long epoch; the running sums are read only then
                seen / len(data),
                lambda t=total_loss, c=correct, s=seen: {"loss": t.item() / s, "train acc": c.item() / s},
            )
        row = {"epoch": epoch + 1, "loss": total_loss.item() / seen, "train_acc": correct.item() / seen}
        due = recipe.eval_every and ((epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs)
        if monitor is not None and due:
            row.update(monitor(model))
        history.append(row)
        progress.update({"loss": row["loss"], "train acc": row["train_acc"]})
        log.debug("epoch %d loss %.4f train acc %.4f", epoch + 1, row["loss"], row["train_acc"])
    progress.close()
    hook.end(model)
    return history
