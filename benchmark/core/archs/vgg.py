"""VGG-16 with batch norm (Simonyan & Zisserman, 2015), CIFAR variant (one linear classifier), and
`convnet`, a small VGG-style net that trains in seconds on a CPU for the quickstart and the tests."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from benchmark.core.archs.registry import NormLayer, register_arch

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """conv-norm-ReLU stages separated by max pools (ceil mode, so 28x28 inputs survive five pools)."""

    def __init__(
        self,
        plan: Sequence[int | str],
        num_classes: int,
        in_channels: int,
        norm_layer: NormLayer,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, stride = in_channels, stem_stride
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            conv = nn.Conv2d(cin, int(item), 3, stride=stride, padding=1, bias=False)
            layers += [conv, norm_layer(int(item)), nn.ReLU(inplace=True)]
            cin, stride = int(item), 1
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_arch
def vgg16_bn(num_classes: int, in_channels: int = 3, norm_layer: NormLayer = nn.BatchNorm2d) -> VGG:
    return VGG(VGG16, num_classes, in_channels, norm_layer)


@register_arch
def convnet(
    num_classes: int,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
    width: int = 32,
    stem_stride: int = 1,
    head: int = 0,
) -> VGG:
    """Stages (w, w | 2w, 2w | 4w), plus a `head`-channel conv at the lowest resolution when head > 0.

    `stem_stride=2` halves the resolution in the first conv: twice the width for the same compute,
    which buys the spare channels (over-parameterisation) that pruning defenses assume.
    """
    w = width
    plan: list[int | str] = [w, w, "M", 2 * w, 2 * w, "M", 4 * w, "M"] + ([head] if head else [])
    return VGG(plan, num_classes, in_channels, norm_layer, stem_stride)
