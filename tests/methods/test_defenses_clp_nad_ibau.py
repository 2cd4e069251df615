"""Unit tests of CLP, NAD and I-BAU on tiny random nets (no trained fixture needed)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.core.archs import build_classifier
from benchmark.core.augment import AugmentSpec
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError
from benchmark.core.evaluate import accuracy
from defenses.base import DefenseData
from defenses.clp import CLP, channel_lipschitz, conv_norm_pairs
from defenses.ibau import IBAU, project_l2
from defenses.nad import NAD, attention_map, attention_stages

# arch -> (kwargs, BN layers that read a conv output, all BN layers)
ARCHS = {
    "resnet18": ({"width": 8}, 20, 20),
    "preact_resnet18": ({"width": 8}, 9, 17),  # pre-activation BNs read residual sums: left alone
    "vgg16_bn": ({}, 13, 13),
    "mobilenet_v2": ({}, 53, 53),
    "convnet": ({"width": 8}, 5, 5),
}


def tiny_data(n: int = 40, size: int = 16, seed: int = 0) -> DefenseData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 5, (n,), generator=g)
    return DefenseData(ImageSet(x, y), AugmentSpec(crop_pad=1), 5)


def tiny_net(seed: int = 0, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return build_classifier("convnet", 5, 1, [0.5], [0.5], width=width)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_clp_pairs_every_conv_fed_norm_on_every_arch(arch: str) -> None:
    kwargs, n_pairs, n_norms = ARCHS[arch]
    model = build_classifier(arch, 7, 3, [0.5] * 3, [0.5] * 3, **kwargs)
    pairs, unpaired = conv_norm_pairs(model, torch.zeros(2, 3, 32, 32))
    modules = dict(model.named_modules())
    assert len(pairs) == n_pairs and len(pairs) + len(unpaired) == n_norms
    assert all(isinstance(modules[c], nn.Conv2d) and isinstance(modules[b], nn.BatchNorm2d) for c, b in pairs)
    assert model.training  # the dummy pass restores the mode


def test_clp_prunes_a_planted_outlier_channel_and_leaves_the_input_alone() -> None:
    model = tiny_net(width=16)  # 16 channels: one outlier can exceed mean + 3 std (at most 15/4 std away)
    model.eval()
    conv, norm = model.net.features[3], model.net.features[4]  # second conv -> its BN
    with torch.no_grad():
        conv.weight[2] *= 50.0
    reference = copy.deepcopy(model.state_dict())
    out = CLP(u=3.0)(model, tiny_data(), torch.Generator().manual_seed(0))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())
    assert {"layer": "net.features.4", "channel": 2} in [
        {k: r[k] for k in ("layer", "channel")} for r in out.info["pruned_channels"]
    ]
    pruned = dict(out.model.named_modules())["net.features.4"]
    assert pruned.weight[2] == 0 and pruned.bias[2] == 0 and torch.equal(pruned.weight[:2], norm.weight[:2])
    counts = [p.params["pruned"] for p in out.curve]
    assert counts == sorted(counts, reverse=True) and out.curve[0].params["u"] == 0.0


def test_channel_lipschitz_is_the_spectral_norm_of_the_bn_scaled_kernel() -> None:
    conv, norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
        norm.running_var.fill_(4.0 - norm.eps)  # std exactly 2
    lips = channel_lipschitz(conv, norm)
    want = torch.linalg.svdvals(conv.weight[1].detach().reshape(3, 9))[0] * 1.0
    assert lips[1] == pytest.approx(float(want), rel=1e-5) and lips[3] == 0


def test_nad_attention_map_is_a_unit_vector_over_positions() -> None:
    feats = torch.randn(6, 8, 5, 7)
    a = attention_map(feats, 2.0)
    assert a.shape == (6, 35) and torch.allclose(a.norm(dim=1), torch.ones(6))
    assert torch.allclose(attention_map(3 * feats, 2.0), a, atol=1e-6)  # scale-free
    assert torch.allclose(a, F.normalize(feats.pow(2).sum(1).flatten(1), dim=1))


def test_nad_picks_the_last_stages_generically() -> None:
    resnet = build_classifier("resnet18", 7, 3, [0.5] * 3, [0.5] * 3, width=8)
    assert attention_stages(resnet, 3) == ["net.layer2", "net.layer3", "net.layer4"]
    mobilenet = build_classifier("mobilenet_v2", 7, 3, [0.5] * 3, [0.5] * 3)
    assert attention_stages(mobilenet, 2) == ["net.layers.15", "net.layers.16"]
    with pytest.raises(ValueError, match="stages"):
        attention_stages(tiny_net(), 9)
    with pytest.raises(ConfigError, match="betas"):
        NAD(betas=[])


def test_nad_runs_and_reports_its_losses() -> None:
    model = tiny_net()
    reference = copy.deepcopy(model.state_dict())
    nad = NAD(teacher_epochs=1, epochs=1, batch_size=12, betas=[1.0, 1.0])
    out = nad(model, tiny_data(n=12), torch.Generator().manual_seed(0))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())
    assert list(out.info["stages"]) == ["net.features.10", "net.features.14"]
    assert len(out.info["ce_per_epoch"]) == 1 and all(v >= 0 for v in out.info["attention_loss_per_epoch"])


def test_ibau_perturbation_stays_in_its_l2_ball() -> None:
    big = torch.full((1, 1, 4, 4), 3.0)
    assert float(project_l2(big, 1.5).norm()) == pytest.approx(1.5)
    assert torch.equal(project_l2(0.01 * big, 1.5), 0.01 * big)
    ibau = IBAU(norm_bound=0.5, batch_size=10)
    delta, _ = ibau.find_perturbation(tiny_net().eval(), tiny_data(), torch.Generator().manual_seed(0))
    assert delta.shape == (1, 1, 16, 16) and float(delta.norm()) <= 0.5 + 1e-5


def test_ibau_hypergradient_adds_the_implicit_term_to_the_direct_gradient() -> None:
    net = tiny_net().eval()
    params = list(net.parameters())
    data = tiny_data(n=10)
    batch = (data.images.x.float() / 255, data.images.y)
    delta = 0.1 * torch.randn(1, 1, 16, 16)
    # K=0: v = 0, so the hypergradient is the plain gradient of the outer loss
    ibau = IBAU(K=0, outer_portion=1.0)
    ibau.hypergradient(net, params, delta, batch, batch, torch.Generator().manual_seed(0))
    direct = [p.grad.clone() for p in params]
    net.zero_grad()
    F.cross_entropy(net(batch[0] + delta), batch[1]).backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(direct, params, strict=True))
    # K>0 adds the indirect term through the inner fixed point
    net.zero_grad()
    IBAU(K=3, outer_portion=1.0).hypergradient(net, params, delta, batch, batch, torch.Generator().manual_seed(0))
    assert any(not torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(direct, params, strict=True))


def test_ibau_runs_without_touching_the_input_model() -> None:
    model = tiny_net()
    reference = copy.deepcopy(model.state_dict())
    out = IBAU(n_rounds=1, batch_size=12, K=1)(model, tiny_data(n=24), torch.Generator().manual_seed(0))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())
    assert out.info["rounds"] == 1 and all(r["pert_norm"] <= 10.0 + 1e-4 for r in out.info["per_round"])
    assert any(not torch.equal(v, out.model.state_dict()[k]) for k, v in reference.items())


def test_ibau_reads_its_defense_data_accuracy_without_touching_the_model_or_random_numbers() -> None:
    """I-BAU's diagnostics evaluate the model each round: that pass must leave its mode, BN statistics and
    every random stream as they were, or recording would change what the defense computes."""
    net = tiny_net().eval()
    reference = copy.deepcopy(net.state_dict())
    cpu_rng = torch.get_rng_state()
    accuracy(net, tiny_data().images)
    assert not net.training and torch.equal(torch.get_rng_state(), cpu_rng)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in reference.items())
    out = IBAU(n_rounds=2, batch_size=12, K=1)(tiny_net(), tiny_data(n=24), torch.Generator().manual_seed(0))
    diagnostics = out.info["diagnostics"]
    assert len(diagnostics["acc_per_epoch"]) == 2 and 0.0 <= diagnostics["acc_start"] <= 1.0
    assert diagnostics["chance_bar"] == pytest.approx(0.3)  # 5 classes: 0.2 + 0.1
