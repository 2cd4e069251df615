"""Building blocks of the attacks whose trigger is produced by a network (Input-aware, LIRA, DFST's detox).

- `EncoderDecoder`: a conv encoder-decoder (optionally with U-Net skips) that maps an image to an
  image-sized output at any H x W and channel count: decoder levels are resized to their encoder
  level's exact size, so odd sizes (28 -> 14 -> 7 -> 4) come back to 28.
- `seeded`: builds a network with every weight drawn from a seed, so two attacks built from the same config
  produce the same trigger without touching the global random state.
- `calibrate_norms`: gives an untrained generator's BatchNorm layers the statistics of real images, so
  its trigger in eval mode is not flat before training.
- `quantise`: rounds to the uint8 grid with a straight-through gradient, so a jointly trained trigger
  is learned as it will be applied at test time (uint8 in, uint8 out) rather than in sub-level detail
  that rounding erases.
- `apply_batched`, `module_state`/`load_module_state`: run a network over many images in bounded
  batches; save and restore its tensors as the flat dict the model cache stores.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.core.errors import ConfigError

CALIBRATION_IMAGES = 64  # clean training images that set an untrained generator's BatchNorm statistics
PIXELS_PER_BATCH = 2**21  # images x H x W per generator call: ~40 images at 224x224, 2,600 at 28x28


class ConvBlock(nn.Sequential):
    """conv 3x3 - BatchNorm (- ReLU): the unit of the authors' generators."""

    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class EncoderDecoder(nn.Module):
    """`depth` encoder levels (two conv blocks, then 2x2 max pooling; width doubles per level), a middle
    block, and a mirrored decoder; the last block has no ReLU. Returns the raw (N, out, H, W) map —
    callers squash it (sigmoid-like for patterns and masks, tanh for bounded noise).

    `skips=False` is the Input-aware generator's shape (plain encoder-decoder); `skips=True` concatenates
    each encoder level into the decoder (the U-Net LIRA uses on CIFAR-10).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, depth: int, skips: bool) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ConfigError(f"generator width={width} and depth={depth} must both be >= 1")
        self.skips = skips
        widths = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(nn.Sequential(ConvBlock(cin, w), ConvBlock(w, w)))
            cin = w
        self.middle = ConvBlock(cin, cin)
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            # The decoder halves the width per level; its last level ends at the output channels.
            cout = out_channels if i == 0 else widths[i - 1]
            cat = w if skips else 0
            self.up.append(nn.Sequential(ConvBlock(cin + cat, cin), ConvBlock(cin, cout, relu=i != 0)))
            cin = cout

    def forward(self, x: Tensor) -> Tensor:
        skips, sizes = [], []
        for level in self.down:
            x = level(x)
            skips.append(x)
            sizes.append(x.shape[-2:])
            x = F.max_pool2d(x, 2, ceil_mode=True)
        x = self.middle(x)
        for level, skip, size in zip(self.up, reversed(skips), reversed(sizes), strict=True):
            x = F.interpolate(x, size=tuple(size), mode="nearest")
            x = level(torch.cat([x, skip], 1) if self.skips else x)
        return x


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """`build()` a module and re-draw every conv/linear weight and bias from `seed` (PyTorch's default
    init, on the CPU); norm layers keep their deterministic init. The global random state is left as it was
    (construction's own draws happen on a forked copy)."""
    with torch.random.fork_rng(devices=[]):
        module = build()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    bound = 1 / math.sqrt(m.weight[0].numel())
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
    return module


@torch.no_grad()
def calibrate_norms(net: nn.Module, x: Tensor, batch: int = 128) -> None:
    """Set every BatchNorm's running statistics to their exact averages over `x` (float images).

    An untrained generator in eval mode would otherwise normalise with the initial (0, 1) statistics and,
    its activations shrinking layer by layer, give a flat trigger (a near-zero mask or noise); calibrated,
    its eval output looks like its training output from the start. Training then updates the statistics.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    net.train()
    for chunk in x.split(batch):
        net(chunk)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.eval()


def quantise(x: Tensor) -> Tensor:
    """Round float images in [0, 1] to the uint8 grid; the gradient passes straight through."""
    return x + ((x * 255).round() / 255 - x).detach()


def apply_batched(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """`fn` over (N, C, H, W) `x` in batches of at most PIXELS_PER_BATCH image pixels."""
    step = max(1, PIXELS_PER_BATCH // (x.shape[-2] * x.shape[-1]))
    if len(x) <= step:
        return fn(x)
    return torch.cat([fn(x[i : i + step]) for i in range(0, len(x), step)])


def rms_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample root-mean-square distance between two (N, ...) batches: (N,).

    A tiny floor under the root keeps the gradient finite where the two are equal (saturated masks)."""
    return ((a - b).pow(2).flatten(1).mean(1) + 1e-12).sqrt()


def diversity_loss(x1: Tensor, x2: Tensor, out1: Tensor, out2: Tensor, eps: float = 1e-7) -> Tensor:
    """Input-aware diversity: mean of ||x1 - x2|| / ||g(x1) - g(x2)|| — small when different images get
    different triggers (patterns or masks) in proportion to how different the images are."""
    return (rms_distance(x1, x2) / (rms_distance(out1, out2) + eps)).mean()


def module_state(prefix: str, module: nn.Module) -> dict[str, Tensor]:
    """`module`'s parameters and buffers as a flat dict with `prefix.` keys, detached, on the CPU."""
    return {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_module_state(prefix: str, module: nn.Module, state: dict[str, Tensor], owner: str) -> None:
    """Load the `prefix.` entries of `state` into `module`; a missing or unexpected key is a clear error."""
    mine = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
    expected = set(module.state_dict())
    if set(mine) != expected:
        missing, extra = sorted(expected - set(mine)), sorted(set(mine) - expected)
        raise ConfigError(
            f"{owner} trigger state does not fit its {prefix!r} network (missing {missing[:3]}, "
            f"unexpected {extra[:3]}): was it cached with other generator settings?"
        )
    try:
        module.load_state_dict(mine)
    except RuntimeError as exc:  # shape mismatch: other width or channel count
        raise ConfigError(f"{owner} trigger state does not fit its {prefix!r} network: {exc}") from None


def first_conv_channels(state: dict[str, Tensor], prefix: str) -> int:
    """Input channels of the first conv weight stored under `prefix.` (to rebuild the network first)."""
    weights = [v for k, v in state.items() if k.startswith(prefix + ".") and v.dim() == 4]
    if not weights:
        raise ConfigError(f"trigger state has no {prefix!r} conv weights (keys: {sorted(state)[:4]}...)")
    return int(weights[0].shape[1])
