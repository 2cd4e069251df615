"""The reference RNP's way of running a cell, rebuilt only as the baseline of `studies.perf`.

It does the same unlearning, recovery and threshold sweep as `defenses.rnp`, but the way the authors'
code (bboylyg/RNP, see docs/references.md) does it, which is where their cell's minutes go.
Calibrated against data/poison_tool_cifar.py and main.py at bboylyg/RNP eeae192:
- defense data: one PIL image at a time (torchvision's CIFAR10.__getitem__ makes it with Image.fromarray,
  DatasetCL, lines 141-166, applies the transform) through random crop + flip + ToTensor + Normalize
  (get_train_loader, lines 50-68), a shuffled `DataLoader` of batch 128 in the main process;
- clean and poisoned test data: numpy HWC uint8 images (DatasetBD.addTrigger stores np.array(img), lines
  194-233) through ToTensor + Normalize per item with no PIL round trip (get_test_loader, lines 70-94),
  unshuffled `DataLoader`s of batch 128 (main.py's --batch_size);
- test mode drops the attack's target class from both test sets (DatasetBD.addTrigger, `continue` when the
  label is the target, lines 209-211): 9,000 clean and 9,000 poisoned CIFAR-10 images per evaluation;
- fp32, NCHW, no autocast;
- the full clean and poisoned test sets evaluated (batch 128, loss and accuracy) after every unlearning
  and every recovery epoch;
- recovery with every weight still trainable (the backward computes all their gradients; only the masks
  are stepped), pruning one neuron at a time through a state-dict round trip, and a full test evaluation
  of the unpruned model (main.py lines 289-291) then one per threshold with the same loaders.
Nothing here produces results: the harness's RNP is `defenses.rnp`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from benchmark.core.data import ImageSet
from defenses.masks import mask_layers, mask_values, with_masked_norm

BATCH = 128  # the reference's batch for the defense data and for both test loaders (CIFAR-10 sized cell)


class NumpyImages(Dataset):
    """One (transformed numpy HWC uint8 image, label) per index, as the authors' DatasetBD hands out test data."""

    def __init__(self, images: ImageSet, transform: Callable) -> None:
        self.arrays: np.ndarray = images.x.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C) uint8
        self.labels: list[int] = images.y.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.arrays[i]), self.labels[i]


class PILImages(NumpyImages):
    """One (transformed PIL image, label) per index, as torchvision's CIFAR10 hands out the defense data."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.arrays[i])), self.labels[i]


def without_target(test: ImageSet, target: int) -> ImageSet:
    """The clean test set as the authors' test mode builds it: every image whose label is not the target."""
    return test.subset((test.y != target).nonzero().squeeze(1))


@dataclass
class ReferenceLoaders:
    defense: DataLoader
    clean: DataLoader
    poisoned: DataLoader


def make_loaders(
    defense: ImageSet,
    test: ImageSet,
    triggered: ImageSet,
    mean: Sequence[float],
    std: Sequence[float],
    defense_batch: int = BATCH,
) -> ReferenceLoaders:
    """The reference's three loaders: augmented defense data (shuffled), clean and poisoned test sets.

    `defense_batch` is smaller only when a reduced workload shrinks the defense data (same batches per epoch).
    """
    size = defense.x.shape[-1]
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train_tf = transforms.Compose(
        [transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip(), *normalize]
    )
    test_tf = transforms.Compose(normalize)
    return ReferenceLoaders(
        defense=DataLoader(PILImages(defense, train_tf), batch_size=defense_batch, shuffle=True),
        clean=DataLoader(NumpyImages(test, test_tf), batch_size=BATCH, shuffle=False),
        poisoned=DataLoader(NumpyImages(triggered, test_tf), batch_size=BATCH, shuffle=False),
    )


@torch.no_grad()
def test_pass(net: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over a loader, one `.item()` per batch as in the reference."""
    net.eval()
    criterion = nn.CrossEntropyLoss()
    total_loss, correct = 0.0, torch.zeros((), device=device, dtype=torch.long)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = net(x)
        total_loss += criterion(out, y).item()
        correct += out.argmax(1).eq(y).sum()
    return total_loss / len(loader), float(correct) / len(loader.dataset)


@dataclass
class ReferenceRun:
    """Seconds per phase and how many full test-set passes (clean + poisoned = 2 per evaluation) ran.

    An epoch's seconds include its test evaluation, and a threshold's its pruning and evaluation, as the
    authors' log times them (main.py lines 209-216, 258-264 and 159-173), so a run can be checked against that log.
    """

    setup_s: float  # copying the network before the first epoch
    unlearn_epoch_s: list[float]
    recover_epoch_s: list[float]
    unpruned_s: float  # the evaluation of the original model before the sweep
    threshold_s: list[float]
    test_passes: int

    @property
    def unlearn_s(self) -> float:
        return sum(self.unlearn_epoch_s)

    @property
    def recover_s(self) -> float:
        return sum(self.recover_epoch_s)

    @property
    def sweep_s(self) -> float:
        return sum(self.threshold_s)

    @property
    def total_s(self) -> float:
        return self.setup_s + self.unlearn_s + self.recover_s + self.unpruned_s + self.sweep_s


class _Tester:
    """Evaluates a model on both test loaders and counts the passes."""

    def __init__(self, loaders: ReferenceLoaders, device: torch.device) -> None:
        self.loaders, self.device, self.passes = loaders, device, 0

    def __call__(self, net: nn.Module) -> None:
        test_pass(net, self.loaders.clean, self.device)
        test_pass(net, self.loaders.poisoned, self.device)
        self.passes += 2


def _train_epoch(
    net: nn.Module,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    after_step: Callable[[], None] = lambda: None,
) -> None:
    """One epoch of the reference's loop: per batch a host copy, a step, and a `.item()` sync (its loss log)."""
    net.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = loss_of(net(x), y)
        loss.item()  # the reference logs the loss every batch: one device sync per step
        loss.backward()
        opt.step()
        after_step()


def unlearn(
    net: nn.Module, loaders: ReferenceLoaders, epochs: int, tester: _Tester, device: torch.device, clock: _Clock
) -> list[float]:
    """Gradient ascent on the defense data for `epochs` epochs, a full test evaluation after each; seconds of each."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [10, 20], 0.1)
    laps = []
    for _ in range(epochs):
        _train_epoch(net, loaders.defense, opt, lambda out, y: -F.cross_entropy(out, y), device)
        tester(net)
        sched.step()
        laps.append(clock.lap())
    return laps


def recover(
    unlearned: nn.Module,
    loaders: ReferenceLoaders,
    epochs: int,
    tester: _Tester,
    device: torch.device,
    clock: _Clock,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Mask learning (lr 0.2, momentum 0.9, alpha 0.2, clamp) with a full test evaluation after each epoch;
    the masks and the seconds of each epoch."""
    net = with_masked_norm(unlearned)
    masks = [m.neuron_mask for m in mask_layers(net).values()]
    opt = torch.optim.SGD(masks, lr=0.2, momentum=0.9)

    @torch.no_grad()
    def clamp() -> None:
        for m in masks:
            m.clamp_(0.0, 1.0)

    laps = []
    for _ in range(epochs):
        _train_epoch(net, loaders.defense, opt, lambda out, y: 0.2 * F.cross_entropy(out, y), device, clamp)
        tester(net)
        laps.append(clock.lap())
    return mask_values(net), laps


def sweep(
    original: nn.Module, masks: dict[str, torch.Tensor], thresholds: Sequence[float], tester: _Tester, clock: _Clock
) -> list[float]:
    """Cumulative pruning of the original model, neuron by neuron, a full test evaluation per threshold; seconds
    of each threshold (its pruning and evaluation)."""
    ranked = sorted(((name, i, v) for name, m in masks.items() for i, v in enumerate(m.tolist())), key=lambda r: r[2])
    net, start, laps = copy.deepcopy(original), 0, []
    for threshold in thresholds:
        while start < len(ranked) and ranked[start][2] <= threshold:
            name, i, _ = ranked[start]
            state = net.state_dict()
            state[f"{name}.weight"][i] = 0.0
            net.load_state_dict(state)
            start += 1
        tester(net)
        laps.append(clock.lap())
    return laps


def run_reference_rnp(
    net: nn.Module,
    loaders: ReferenceLoaders,
    unlearn_epochs: int,
    recover_epochs: int,
    thresholds: Sequence[float],
    device: torch.device,
    sync: Callable[[], None],
) -> ReferenceRun:
    """The whole reference-style RNP cell on `net` (a bare fp32 network that takes normalised input)."""
    clock = _Clock(sync)
    original = copy.deepcopy(net).float().to(device, memory_format=torch.contiguous_format)
    tester = _Tester(loaders, device)
    unlearned = copy.deepcopy(original)
    setup_s = clock.lap()
    unlearn_laps = unlearn(unlearned, loaders, unlearn_epochs, tester, device, clock)
    masks, recover_laps = recover(unlearned, loaders, recover_epochs, tester, device, clock)
    tester(original)  # the unpruned model's line of the authors' pruning log
    unpruned_s = clock.lap()
    sweep_laps = sweep(original, masks, thresholds, tester, clock)
    return ReferenceRun(setup_s, unlearn_laps, recover_laps, unpruned_s, sweep_laps, tester.passes)


def loading_seconds(loaders: ReferenceLoaders) -> float:
    """One pass over both test loaders without a model: what the per-sample pipeline alone costs per evaluation."""
    start = time.perf_counter()
    for loader in (loaders.clean, loaders.poisoned):
        for _ in loader:
            pass
    return time.perf_counter() - start


class _Clock:
    """Lap times that wait for the device first, so queued GPU work is counted where it belongs."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        sync()
        self.last = time.perf_counter()

    def lap(self) -> float:
        self.sync()
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds
