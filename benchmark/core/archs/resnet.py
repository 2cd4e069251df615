"""CIFAR-style ResNet-18 (He et al., 2016) and PreAct-ResNet-18 (He et al., 2016b).

The ResNet-18 state-dict keys match the RNP/ANP reference checkpoints: `conv1`, `bn1`,
`layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2}`, `layer{2,3,4}.0.shortcut.{0,1}`, `linear`.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.core.archs.registry import NormLayer, register_arch


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), norm_layer(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), norm_layer(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm_layer(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.bn1, self.conv1 = norm_layer(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = norm_layer(cout), _conv3x3(cout, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if len(self.shortcut) else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    """Four stages of two blocks; global average pooling, so any input size >= 8 works."""

    def __init__(
        self,
        block: type[BasicBlock] | type[PreActBlock],
        num_classes: int,
        in_channels: int,
        norm_layer: NormLayer,
        width: int = 64,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        self.preact = block is PreActBlock
        self.final_norm = self.preact and final_norm
        self.conv1 = _conv3x3(in_channels, width)
        if not self.preact:
            self.bn1 = norm_layer(width)
        widths, cin = [width, 2 * width, 4 * width, 8 * width], width
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(
                self,
                f"layer{i + 1}",
                nn.Sequential(block(cin, w, stride, norm_layer), block(w, w, 1, norm_layer)),
            )
            cin = w
        if self.final_norm:
            self.bn = norm_layer(cin)
        self.linear = nn.Linear(cin, num_classes)

    def features(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.final_norm:
            out = F.relu(self.bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))


@register_arch
def resnet18(num_classes: int, in_channels: int = 3, norm_layer: NormLayer = nn.BatchNorm2d, width: int = 64) -> ResNet:
    return ResNet(BasicBlock, num_classes, in_channels, norm_layer, width)


@register_arch
def preact_resnet18(
    num_classes: int,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
    width: int = 64,
    final_norm: bool = True,
) -> ResNet:
    """`final_norm=False`: no BatchNorm+ReLU after the last stage, as in BackdoorBench's PreActResNet18."""
    return ResNet(PreActBlock, num_classes, in_channels, norm_layer, width, final_norm)
