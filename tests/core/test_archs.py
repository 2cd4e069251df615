"""Every registered architecture: odd class counts, grey and colour input, gradients, norm_layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.core.archs import arch_names, build_arch, build_classifier, register_arch
from benchmark.core.errors import ConfigError
from benchmark.core.evaluate import for_inference
from defenses.masks import mask_layers, with_masked_norm
from tests.conftest import group_options


@pytest.mark.parametrize("name", arch_names())
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_forward_backward_with_odd_class_count(name: str, channels: int, size: int) -> None:
    model = build_classifier(name, 7, channels, [0.5] * channels, [0.25] * channels)
    out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


class CountingNorm(nn.BatchNorm2d):
    made = 0

    def __init__(self, n: int) -> None:
        super().__init__(n)
        CountingNorm.made += 1


@pytest.mark.parametrize("name", arch_names())
def test_norm_layer_is_used_everywhere(name: str) -> None:
    CountingNorm.made = 0
    model = build_arch(name, 5, 3, norm_layer=CountingNorm)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, CountingNorm) for m in bns) and CountingNorm.made == len(bns)


def test_every_arch_yaml_is_registered() -> None:
    assert set(group_options("arch")) <= set(arch_names())


def test_registry_rejects_unknown_and_duplicate_names() -> None:
    with pytest.raises(ConfigError, match=r"Unknown architecture 'resnet183'; choose from .*resnet18"):
        build_arch("resnet183", 10)
    with pytest.raises(KeyError, match="registered twice"):

        @register_arch
        def resnet18(**_: object) -> nn.Module:
            return nn.Identity()


def test_resnet18_matches_reference_checkpoint_layout() -> None:
    keys = build_arch("resnet18", 10).state_dict()
    assert keys["conv1.weight"].shape == (64, 3, 3, 3)
    assert keys["layer2.0.shortcut.0.weight"].shape == (128, 64, 1, 1)
    assert "layer4.0.shortcut.1.running_var" in keys and "layer1.0.shortcut.0.weight" not in keys
    assert keys["linear.weight"].shape == (10, 512)
    bn_channels = sum(m.num_features for m in build_arch("resnet18", 10).modules() if isinstance(m, nn.BatchNorm2d))
    assert bn_channels == 4800  # the 4,800 masks RNP learns on ResNet-18


def test_classifier_state_dict_is_the_bare_net() -> None:
    model = build_classifier("resnet18", 10, 3, [0.5] * 3, [0.5] * 3)
    assert set(model.net.state_dict()) == set(build_arch("resnet18", 10).state_dict())
    assert all(k.startswith("net.") for k in model.state_dict())


def _with_random_bn_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding them into the convs changes the weights."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", arch_names())
def test_inference_copy_folds_batchnorm_and_predicts_the_same(name: str) -> None:
    model = _with_random_bn_statistics(build_classifier(name, 7, 3, [0.5] * 3, [0.25] * 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = for_inference(model, torch.device("cpu"))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    n_bn = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    left = sum(type(m) is nn.BatchNorm2d for m in folded.modules())
    # Pre-activation nets keep the BNs that follow a sum or open a block (no conv right before them).
    assert left < n_bn if name.startswith("preact") else left == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model itself is untouched
    assert for_inference(folded, torch.device("cpu")) is folded


def test_masked_norm_and_watched_models_are_not_folded() -> None:
    model = _with_random_bn_statistics(build_classifier("convnet", 3, 1, [0.5], [0.25], width=4))
    masked = with_masked_norm(model)
    folded = for_inference(masked, torch.device("cpu"))
    assert len(mask_layers(folded)) == len(mask_layers(masked))  # masks stay where they act
    compiled = torch.compile(model)  # not run: only whether its compiled graph would be replaced
    assert for_inference(compiled, torch.device("cpu")) is compiled
    model.net.register_forward_hook(lambda *_: None)
    assert for_inference(model, torch.device("cpu")) is model
