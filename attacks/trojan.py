"""TrojanNN (Liu et al., NDSS 2018, "Trojaning attack on neural networks").

1. Pick the neurons to excite: in the layer that feeds the classifier head of a clean model, the
   `neurons` units with the largest summed absolute outgoing weights (the most connected ones).
2. Generate the trigger: a square mask in the bottom-right corner (side sqrt(`area`) of the image side)
   whose pixels are optimised so that, stamped on a blank image, those neurons reach `target_value`
   (squared error, Adam on a tanh-parameterised patch with a cosine schedule, as TrojanZoo does).
3. Retrain: the clean model is fine-tuned on the training set with a `poison_rate` of images stamped
   with the trigger and relabelled (`retrain: finetune`), or a new model is trained on it from scratch
   (`retrain: scratch`, BackdoorBench's choice).

The paper retrains on images reverse-engineered from the model (it assumes no training data); the
harness's attacker owns the training set, so retraining uses it instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attacks.base import AttackContext, to_uint8
from attacks.clean_model import Retrained, head, penultimate
from benchmark.core.errors import ConfigError
from benchmark.core.progress import Progress
from benchmark.core.validation import bounded

log = logging.getLogger(__name__)


def most_connected(model: nn.Module, k: int) -> Tensor:
    """Indices of the `k` features entering the head whose outgoing weights have the largest |w| sum."""
    weight = head(model).weight.detach().abs()  # (classes, features)
    if k > weight.shape[1]:
        raise ConfigError(f"Trojan.neurons={k} is out of range: the head has {weight.shape[1]} input features")
    return weight.sum(0).argsort(descending=True)[:k]


def stamp(images: Tensor, patch: Tensor) -> Tensor:
    """Differentiable: `patch` (C, k, k) over the bottom-right corner of float `images` (N, C, H, W)."""
    h, w = images.shape[-2:]
    k = patch.shape[-1]
    placed = F.pad(patch, (w - k, 0, h - k, 0))
    mask = F.pad(torch.ones_like(patch[:1]), (w - k, 0, h - k, 0))
    return images * (1 - mask) + placed


@dataclass
class Trojan(Retrained):
    area: float = bounded(0.07, 0.0, 1.0)  # trigger mask area as a fraction of the image area
    neurons: int = bounded(2, 1)  # neurons to excite, picked by connectivity
    target_value: float = bounded(100.0, 0.0)  # activation the chosen neurons are driven towards
    steps: int = bounded(1000, 0)  # trigger optimisation steps
    lr: float = bounded(0.1, 0.0)  # Adam step size on the tanh-parameterised patch
    init_seed: int = bounded(0, lo=0)  # the random starting patch

    def side(self, h: int, w: int) -> int:
        return max(1, round(math.sqrt(self.area) * min(h, w)))

    def initial_patch(self, channels: int, k: int) -> Tensor:
        """The unconstrained (atanh-space) starting patch, drawn on the CPU so every device starts alike."""
        return torch.randn(channels, k, k, generator=torch.Generator().manual_seed(self.init_seed))

    def prepare(self, ctx: AttackContext) -> None:
        super().prepare(ctx)
        channels, h, w = ctx.train.x.shape[1:]
        self.neuron_index = most_connected(self.clean, self.neurons)
        self.patch = to_uint8(self.optimise(self.clean, channels, h, w) * 255).cpu()

    def activation(self, model: nn.Module, patch: Tensor, h: int, w: int) -> Tensor:
        """Activation of the chosen neurons for float `patch` (C, k, k) in [0, 1] on a blank HxW image."""
        blank = torch.zeros(1, patch.shape[0], h, w, device=patch.device)
        return penultimate(model, stamp(blank, patch))[0, self.neuron_index.to(patch.device)]

    def optimise(self, model: nn.Module, channels: int, h: int, w: int) -> Tensor:
        """The trigger patch, float (C, k, k) in [0, 1], after `steps` of driving the neurons to target."""
        device = next(model.parameters()).device
        raw = self.initial_patch(channels, self.side(h, w)).to(device).requires_grad_(True)
        opt = torch.optim.Adam([raw], lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.steps))
        with Progress("trojan trigger", self.steps, "step", logger=log) as progress:
            for _ in range(self.steps):
                act = self.activation(model, (raw.tanh() + 1) / 2, h, w)
                loss = F.mse_loss(act, torch.full_like(act, self.target_value), reduction="sum")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                progress.update(lambda loss=loss: {"loss": loss.item()})
        return ((raw.detach().tanh() + 1) / 2).clamp(0, 1)

    def trigger_state(self) -> dict[str, Tensor]:
        return {"patch": self.prepared_patch(), "neurons": self.neuron_index.cpu()}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        if set(state) != {"patch", "neurons"}:
            raise ConfigError(f"Trojan trigger state needs 'patch' and 'neurons'; the cache holds {sorted(state)}")
        self.patch, self.neuron_index = state["patch"].to(torch.uint8), state["neurons"].long()

    def prepared_patch(self) -> Tensor:
        patch = getattr(self, "patch", None)
        if patch is None:
            raise ConfigError("Trojan has no trigger yet: prepare(ctx) optimises it (or load it from the cache)")
        return patch

    def apply(self, x: Tensor) -> Tensor:
        patch = self.prepared_patch()
        k = self.side(*x.shape[-2:])
        if patch.shape != (x.shape[1], k, k):
            raise ConfigError(
                f"Trojan trigger of shape {tuple(patch.shape)} does not fit images of shape {tuple(x.shape[1:])} "
                f"(expected ({x.shape[1]}, {k}, {k})): it was optimised for another image size"
            )
        out = x.clone()
        out[..., -k:, -k:] = patch.to(x.device)
        return out
