"""ImageNet-style ResNet-18 (He et al., 2016) in torchvision's layout, for 224x224 inputs (ImageNet-12).

7x7 stride-2 stem and max-pool, four stages, `fc` head: the state-dict keys are exactly torchvision's
`resnet18()` (`conv1`, `bn1`, `layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2}`, `layer{2,3,4}.0.downsample.{0,1}`,
`fc`), so torchvision-layout checkpoints load unchanged. The stem downsamples 4x, so on 32x32 inputs
the last stage sees 1x1 maps: use `resnet18` (CIFAR stem) for small images.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from benchmark.core.archs.registry import NormLayer, register_arch


@register_arch
def resnet18_imagenet(num_classes: int, in_channels: int = 3, norm_layer: NormLayer = nn.BatchNorm2d) -> ResNet:
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, norm_layer=norm_layer)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net
