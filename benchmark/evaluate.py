"""Evaluation in large batches under inference mode: clean accuracy, ASR and robust accuracy."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from benchmark.archs import to_input
from benchmark.datasets import ImageSet
from benchmark.poison import TriggeredSet
from benchmark.training import autocast


@dataclass(frozen=True)
class Metrics:
    """Fractions in [0, 1]: `asr` and `robust_acc` are on the triggered non-target test images."""

    clean_acc: float
    asr: float
    robust_acc: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.inference_mode()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted labels of uint8 images `x` (N, C, H, W), on x's device, model in eval mode."""
    model.eval()
    preds = []
    for i in range(0, len(x), batch_size):
        with autocast(x.device):
            preds.append(model(to_input(x[i : i + batch_size])).argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=x.device)


def accuracy(model: nn.Module, data: ImageSet, batch_size: int = 1024) -> float:
    if len(data) == 0:
        return float("nan")
    return (predict(model, data.x, batch_size) == data.y).float().mean().item()


def evaluate(model: nn.Module, test: ImageSet, triggered: TriggeredSet, batch_size: int = 1024) -> Metrics:
    """Clean accuracy on the whole test set; ASR and robust accuracy on the triggered images."""
    clean = accuracy(model, test, batch_size)
    if len(triggered.images) == 0:
        return Metrics(clean, float("nan"), float("nan"))
    pred = predict(model, triggered.images.x, batch_size)
    asr = (pred == triggered.images.y).float().mean().item()
    robust = (pred == triggered.true_y).float().mean().item()
    return Metrics(clean, asr, robust)


def der(before: Metrics, after: Metrics) -> float:
    """Defense effectiveness rating: (max(0, dASR) - max(0, dCA) + 1) / 2, in [0, 1]."""
    d_asr = max(0.0, before.asr - after.asr)
    d_ca = max(0.0, before.clean_acc - after.clean_acc)
    return (d_asr - d_ca + 1) / 2
