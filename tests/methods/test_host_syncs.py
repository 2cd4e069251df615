"""No host synchronisation per batch in the loops that train: on a GPU each `.item()`, `int(t)` or `float(t)` waits
for every queued kernel, so a loop that reads a loss or a count each batch runs at the speed of its launches.
Counted here on the CPU with torch's profiler: every such read is one `aten::_local_scalar_dense`. Each loop runs
twice with the same epochs (iterations for ANP) and three times the batches per epoch; the reads must not grow."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from benchmark.core.archs import build_classifier
from benchmark.core.augment import AugmentSpec
from benchmark.core.data import ImageSet
from benchmark.core.training import TrainRecipe, epoch_batches, train_classifier
from defenses.anp import ANP
from defenses.base import DefenseData
from defenses.ft import FineTuning
from defenses.ibau import IBAU
from defenses.nad import NAD
from defenses.rnp import RNP

BATCH = 8
CLASSES = 5


def data(batches: int) -> DefenseData:
    """`batches` full batches of random images; every class present, so a constant prediction is not 0 accurate."""
    n = batches * BATCH
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    return DefenseData(ImageSet(x, torch.arange(n) % CLASSES), AugmentSpec(crop_pad=1), CLASSES)


def net() -> nn.Module:
    torch.manual_seed(0)
    return build_classifier("convnet", CLASSES, 3, [0.5] * 3, [0.5] * 3, width=8)  # the loops, not the net, matter


def train(d: DefenseData) -> object:
    recipe = TrainRecipe(epochs=2, batch_size=BATCH, lr=0.01, warmup_epochs=0.0)
    return train_classifier(net(), d.images, recipe, d.augment, torch.Generator().manual_seed(0))


def defense(make: Callable[[], object]) -> Callable[[DefenseData], object]:
    return lambda d: make()(net(), d, torch.Generator().manual_seed(0))


# unlearn_lr 0 keeps unlearning from reaching its threshold, so both runs take the same epochs
LOOPS: dict[str, Callable[[DefenseData], object]] = {
    "training": train,
    "rnp": lambda d: RNP(
        batch_size=BATCH, unlearn_lr=0.0, clean_threshold=0.0, unlearn_epochs=2, recover_epochs=2
    ).learn(net(), d, torch.Generator().manual_seed(0)),
    "anp": lambda d: ANP(batch_size=BATCH, iterations=4).learn(net(), d, torch.Generator().manual_seed(0)),
    "ft": defense(lambda: FineTuning(epochs=2, batch_size=BATCH)),
    "nad": defense(lambda: NAD(batch_size=BATCH, teacher_epochs=2, epochs=2)),
    "ibau": defense(lambda: IBAU(batch_size=BATCH, n_rounds=1, K=1)),
}


def host_reads(loop: Callable[[DefenseData], object], d: DefenseData) -> int:
    """Reads of a tensor's value into Python, except an optimiser's own: Adam reads its step counter, which torch
    keeps on the host (not on the GPU) unless the optimiser is capturable or fused, so those cost no sync."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loop(d)
    return sum(e.name == "aten::_local_scalar_dense" and not _in_optimizer_step(e) for e in prof.events())


def _in_optimizer_step(event: object) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step#"):
            return True
        parent = parent.cpu_parent
    return False


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_host_reads_do_not_grow_with_batches(name: str) -> None:
    few, many = host_reads(LOOPS[name], data(2)), host_reads(LOOPS[name], data(6))
    assert many == few, f"{name}: {few} host reads at 2 batches an epoch, {many} at 6: the loop reads each batch"


def test_the_count_sees_a_read_each_batch() -> None:
    """The count above is not blind: a loop that reads its loss each batch (what the loops did) is caught."""

    def reading(d: DefenseData) -> list[float]:
        return [float(x.mean()) for x, _ in epoch_batches(d.images, BATCH, d.augment, torch.Generator())]

    assert host_reads(reading, data(6)) - host_reads(reading, data(2)) == 4
