"""DFST (Cheng, Liu, Ma & Zhang, AAAI 2021, "Deep Feature Space Trojan Attack of Neural Networks by
Controlled Detoxification").

Trigger: a style transfer. Poisoned images are (1 - alpha) * x + alpha * stylise(x), relabelled to the
target (shared poisoning, non-target images, `poison_rate` of the training set).

REDUCED style generator: the paper's CycleGAN (the authors' PyTorch revision: Magenta's arbitrary
style-transfer network with a sunrise photo) cannot be trained or shipped here. `sunrise` is a fixed,
seeded stylisation that keeps the two kinds of feature a style transfer adds: a colour/tone remap of
the smoothed luminance through a sunrise palette (violet -> crimson -> orange -> pale yellow; on
grey images the palette's luminance, a tone curve) — a *simple* feature — and a brush-stroke texture
(seeded horizontal streaks, strongest in mid-tones) that a per-pixel colour map cannot reproduce.

Controlled detoxification (the hook, after every training epoch but the last, as the authors' revision
does): on a `detox_fraction` sample of clean training images,
1. compromised neurons: the `neuron_ratio` share of the features entering the classifier head (spatial
   means of the last stage, the authors' "layer4" averaged over the feature map) whose mean activation
   rises most from clean to poisoned images;
2. a feature injector — a per-pixel linear map of [x, local max, local min, local mean] (window 11 on
   32 px, scaled), identity at start, so it can only make *simple* features — is trained for
   `detox_epochs` (Adam) to make images (1 - alpha) x + alpha inj(x) that the model sends to the target,
   that excite the compromised neurons (w_detox) and stay structurally similar to x (SSIM, w_ssim);
3. in the next epoch a `detox_rate` share of each batch is added as detoxicants: injector outputs of
   clean training images WITH THEIR TRUE LABELS, so the simple features stop leading to the target and
   the backdoor has to live in deeper (texture) features.
Departures from the authors' code, named: the local min is the true min (their code takes minus the
local max); the injector's loss keeps the image similar (their PyTorch revision subtracts a
dissimilarity, and computes the model's outputs under no_grad so only that term trains — both look
unintended; the TensorFlow original maximises SSIM); detoxicants are appended to the batch (the
authors replace clean samples).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attacks.base import Attack, AttackContext, to_uint8
from attacks.clean_model import head
from benchmark.core.archs import to_input
from benchmark.core.augment import random_crop_flip
from benchmark.core.progress import Progress
from benchmark.core.training import TrainHook
from benchmark.core.validation import bounded

log = logging.getLogger(__name__)

# Sunrise palette stops at tone 0, 1/3, 2/3, 1 (RGB in [0, 1]).
SUNRISE = torch.tensor([[0.16, 0.05, 0.28], [0.78, 0.18, 0.22], [1.00, 0.58, 0.12], [1.00, 0.92, 0.60]])
LUMA = torch.tensor([0.299, 0.587, 0.114])


def palette(tone: Tensor, channels: int) -> Tensor:
    """Map tone (N, 1, H, W) in [0, 1] through the sunrise palette: (N, C, H, W); grey when C != 3."""
    stops = SUNRISE if channels == 3 else (SUNRISE @ LUMA)[:, None].expand(4, channels)
    stops = stops.to(tone.device)  # (4, C)
    pos = tone.clamp(0, 1) * (len(stops) - 1)
    lo = pos.floor().clamp(max=len(stops) - 2)
    frac = pos - lo
    lo = lo.long()[:, 0]  # (N, H, W)
    return (stops[lo] * (1 - frac[:, 0, ..., None]) + stops[lo + 1] * frac[:, 0, ..., None]).permute(0, 3, 1, 2)


def strokes(h: int, w: int, seed: int, device: torch.device) -> Tensor:
    """A fixed brush-stroke texture in [-1, 1]: (1, 1, H, W), horizontal streaks drawn at 32x32 from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, 32, 32, generator=gen) * 2 - 1
    streaks = F.avg_pool2d(F.pad(noise, (3, 3, 0, 0), mode="circular"), (1, 7), stride=1)
    streaks = streaks / streaks.abs().max()
    return F.interpolate(streaks, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1).to(device)


def local_mean(x: Tensor, k: int) -> Tensor:
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


def ssim(a: Tensor, b: Tensor, window: int = 5) -> Tensor:
    """Mean structural similarity of two float batches in [0, 1] (uniform `window`): a scalar in [-1, 1]."""
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = local_mean(a, window), local_mean(b, window)
    var_a = local_mean(a * a, window) - mu_a**2
    var_b = local_mean(b * b, window) - mu_b**2
    cov = local_mean(a * b, window) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    return (num / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean()


class FeatureInjector(nn.Module):
    """Per-pixel linear map of [x, local max, local min, local mean] (window `k`) back to C channels.

    It starts as the identity and can only make simple (colour, local-contrast) features: the
    detoxicants it makes are what the model must stop linking to the target.
    """

    def __init__(self, channels: int, window: int) -> None:
        super().__init__()
        self.window = window
        init = torch.zeros(4 * channels, channels)
        init[:channels] = torch.eye(channels)
        self.delta = nn.Parameter(init)

    def forward(self, x: Tensor) -> Tensor:
        k = self.window
        mx = F.max_pool2d(x, k, stride=1, padding=k // 2)
        mn = -F.max_pool2d(-x, k, stride=1, padding=k // 2)
        feats = torch.cat([x, mx, mn, local_mean(x, k)], 1)  # (N, 4C, H, W)
        return torch.einsum("nkhw,kc->nchw", feats, self.delta).clamp(0, 1)


def logits_and_features(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The model's logits and the features entering its head, (N, K) and (N, D), in one pass."""
    captured: list[Tensor] = []
    handle = head(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, captured[0].flatten(1)


@dataclass
class DFST(Attack):
    poison_rate: float = bounded(0.05, 0.0, 1.0)
    alpha: float = bounded(0.6, 0.0, 1.0)  # weight of the stylised image in the trigger (and detoxicants)
    texture: float = bounded(0.3, 0.0)  # amplitude of the stroke texture in the stylisation
    style_seed: int = bounded(0, lo=0)  # fixes the stroke texture
    detox: bool = True
    detox_rate: float = bounded(0.05, 0.0, 1.0)  # detoxicants added per batch, as a share of the batch
    detox_fraction: float = bounded(0.03, 0.0, 1.0)  # share of the training set each detox round uses
    neuron_ratio: float = bounded(0.01, 0.0, 1.0)  # share of the head's input features deemed compromised
    detox_epochs: int = bounded(10, 0)  # feature-injector training passes per round
    injector_lr: float = bounded(0.01, 0.0)
    w_ssim: float = bounded(0.1, 0.0)
    w_detox: float = bounded(0.3, 0.0)
    window_px: int | None = bounded(None, 1)  # injector window; null: 11 on 32 px, scaled (odd)

    def window(self, h: int, w: int) -> int:
        k = self.window_px if self.window_px is not None else max(3, round(11 * min(h, w) / 32))
        return k if k % 2 else k + 1

    def stylise(self, x: Tensor) -> Tensor:
        """The reduced sunrise style transfer of float images (N, C, H, W) in [0, 1]."""
        c, h, w = x.shape[1:]
        k = 2 * max(1, round(min(h, w) / 32)) + 1  # the style loses detail finer than ~1/16 of the image
        tone = local_mean(x.mean(1, keepdim=True), k)
        tone = tone + self.texture * strokes(h, w, self.style_seed, x.device) * 4 * tone * (1 - tone)
        return palette(tone.clamp(0, 1), c)

    def triggered(self, x: Tensor) -> Tensor:
        return (1 - self.alpha) * x + self.alpha * self.stylise(x)

    def apply(self, x: Tensor) -> Tensor:
        return to_uint8(self.triggered(x.float() / 255) * 255)

    def train_hook(self, ctx: AttackContext) -> TrainHook | None:
        return DetoxHook(self, ctx) if self.detox else None


class DetoxHook(TrainHook):
    """After each epoch but the last: find compromised neurons, train a feature injector; add detoxicants."""

    def __init__(self, attack: DFST, ctx: AttackContext) -> None:
        self.attack, self.ctx = attack, ctx
        self.data = ctx.train.to(ctx.device)
        recipe = attack.adjust_recipe(ctx.recipe)
        self.batch_size = recipe.batch_size
        self.steps_per_epoch = max(1, len(self.data) // recipe.batch_size)
        self.total_steps = recipe.epochs * self.steps_per_epoch
        self.injector: FeatureInjector | None = None
        self.neurons: list[Tensor] = []  # compromised neurons found in each round

    def batch(self, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        k = round(self.attack.detox_rate * len(x))
        if self.injector is None or k == 0:
            return x, y
        gen = self.ctx.gen
        idx = torch.randint(len(self.data), (k,), generator=gen, device=gen.device).to(self.data.x.device)
        clean = to_input(random_crop_flip(self.data.x[idx], self.ctx.augment, gen))
        with torch.no_grad():
            detox = self.detoxicants(self.injector, clean)
        return torch.cat([x, detox.contiguous(memory_format=torch.channels_last)]), torch.cat([y, self.data.y[idx]])

    def detoxicants(self, injector: FeatureInjector, x: Tensor) -> Tensor:
        """(1 - alpha) x + alpha inj(x): the images the injector makes from clean images."""
        a = self.attack.alpha
        return (1 - a) * x + a * injector(x)

    def after_step(self, model: nn.Module, step: int) -> None:
        done = step + 1
        if done % self.steps_per_epoch == 0 and done < self.total_steps:
            was_training = model.training
            model.eval()
            try:
                self.detoxify(model)
            finally:
                model.train(was_training)

    def sample(self, eligible: Tensor, n: int) -> Tensor:
        gen = self.ctx.gen
        order = torch.randperm(len(eligible), generator=gen, device=gen.device).to(eligible.device)
        return eligible[order[:n]]

    def detoxify(self, model: nn.Module) -> None:
        a, data = self.attack, self.data
        n = min(len(data), max(self.batch_size, round(a.detox_fraction * len(data))))
        clean_idx = self.sample(torch.arange(len(data), device=data.x.device), n)
        wanted = a.target_labels(data.y, self.ctx.num_classes)
        poison_idx = self.sample((wanted != data.y).nonzero().squeeze(1), n)
        clean_x, clean_y = to_input(data.x[clean_idx]), data.y[clean_idx]
        poison_x = to_input(a.apply_train(data.x[poison_idx], self.ctx.gen))
        neurons = self.compromised(model, clean_x, poison_x)
        self.neurons.append(neurons.cpu())
        self.injector = self.train_injector(model, clean_x, clean_y, neurons).eval()

    def mean_features(self, model: nn.Module, x: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([logits_and_features(model, b)[1] for b in x.split(self.batch_size)]).mean(0)

    def compromised(self, model: nn.Module, clean: Tensor, poisoned: Tensor) -> Tensor:
        """Indices of the head-input features whose mean activation rises most on poisoned images."""
        diff = self.mean_features(model, poisoned) - self.mean_features(model, clean)
        k = max(1, int(self.attack.neuron_ratio * len(diff)))
        return diff.topk(k).indices

    def train_injector(self, model: nn.Module, x: Tensor, y: Tensor, neurons: Tensor) -> FeatureInjector:
        a = self.attack
        injector = FeatureInjector(x.shape[1], a.window(*x.shape[-2:])).to(x.device)
        opt = torch.optim.Adam(injector.parameters(), lr=a.injector_lr, betas=(0.5, 0.9))
        target = a.target_labels(y, self.ctx.num_classes)
        with Progress("dfst detox injector", a.detox_epochs, logger=log) as progress:
            for _ in range(a.detox_epochs):
                order = self.sample(torch.arange(len(x), device=x.device), len(x))
                for idx in order.split(self.batch_size):
                    made = self.detoxicants(injector, x[idx])
                    logits, feats = logits_and_features(model, made)
                    loss = (
                        F.cross_entropy(logits, target[idx])
                        - a.w_ssim * ssim(made, x[idx])
                        - a.w_detox * feats[:, neurons].mean()
                    )
                    grads = torch.autograd.grad(loss, list(injector.parameters()))
                    for p, g in zip(injector.parameters(), grads, strict=True):
                        p.grad = g
                    opt.step()
                progress.update(lambda loss=loss: {"loss": loss.item()})
        return injector
