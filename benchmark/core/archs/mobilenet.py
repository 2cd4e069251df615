"""MobileNetV2 (Sandler et al., 2018), CIFAR variant: stride 1 in the stem and the first stages."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.core.archs.registry import NormLayer, register_arch

# (expansion, out_channels, blocks, stride) — the CIFAR variant keeps 32x32 resolution longer
PLAN = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.conv1, self.bn1 = nn.Conv2d(cin, hidden, 1, bias=False), norm_layer(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = norm_layer(hidden)
        self.conv3, self.bn3 = nn.Conv2d(hidden, cout, 1, bias=False), norm_layer(cout)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu6(self.bn1(self.conv1(x)))
        out = F.relu6(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), norm_layer(32)
        blocks, cin = [], 32
        for expansion, cout, n, stride in PLAN:
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, expansion, stride if i == 0 else 1, norm_layer))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.conv2, self.bn2 = nn.Conv2d(cin, 1280, 1, bias=False), norm_layer(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu6(self.bn1(self.conv1(x))))
        out = F.relu6(self.bn2(self.conv2(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_arch
def mobilenet_v2(num_classes: int, in_channels: int = 3, norm_layer: NormLayer = nn.BatchNorm2d) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, norm_layer)
