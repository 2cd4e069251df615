"""Defenses, parametrised over conf/defense/*.yaml: each lowers the ASR of a planted backdoor.

Defense parameters come from the YAML, shrunk only in epochs/iterations (`SHRINK`) so the suite stays fast.
"""

from __future__ import annotations

import copy

import pytest
import torch

from benchmark.core.archs import build_classifier
from benchmark.core.augment import AugmentSpec
from benchmark.core.data import ImageSet
from benchmark.core.evaluate import evaluate
from benchmark.run.cell import build_parts
from defenses.base import DefenseData
from defenses.masks import MaskedBatchNorm2d, mask_layers, prune_channels, with_masked_norm
from defenses.rnp import RNP
from tests.conftest import compose_cfg, group_options

DEFENSES = group_options("defense")
# Fewer iterations for the fast suite; every other parameter is the YAML's.
SHRINK: dict[str, list[str]] = {
    "rnp": ["defense.recover_epochs=10"],
    # 100 of 2000 iterations, pruning the 20 lowest of the tiny net's 160 masks (12%): in a probe ASR 0.95 -> 0.004
    # (0.01 at 150, 0.13 at 300 iterations); the fixed threshold 0.2 prunes only 3-10 channels of a net this small.
    "anp": ["defense.iterations=100", "defense.selection=count", "defense.prune_count=20"],
    "ft": ["defense.epochs=10"],
    "fp": ["defense.epochs=10"],
    "ibau": ["defense.n_rounds=1"],  # 1 of 5 rounds (~10 s): ASR 0.95 -> 0.15 in a probe of this recipe
    "nad": ["defense.teacher_epochs=3", "defense.epochs=5"],  # of 10 / 20 (~10 s): ASR 0.95 -> 0.01 in a probe
}


def make_defense(name: str, *overrides: str):
    return build_parts(compose_cfg([f"defense={name}", "experiment=quickstart", *overrides])).defense


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_lowers_asr_without_touching_the_input_model(name: str, backdoored, embedded, tmp_home) -> None:
    model, triggered, before = backdoored
    reference = copy.deepcopy(model.state_dict())
    defense = make_defense(name, *SHRINK.get(name, []))
    data = DefenseData(embedded.reserve, AugmentSpec(crop_pad=2), 10)
    out = defense(model, data, torch.Generator().manual_seed(0))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())
    after = evaluate(out.model, embedded.test, triggered)
    if name == "none":
        assert after == before
    else:
        assert after.asr < before.asr - 0.3, (before, after, out.info)


def test_masked_norm_equals_batchnorm_with_unit_masks(backdoored) -> None:
    model = backdoored[0]
    masked = with_masked_norm(model)
    assert len(mask_layers(masked)) == 5
    x = torch.rand(8, 1, 28, 28)
    model.eval(), masked.eval()
    assert torch.allclose(model(x), masked(x), atol=1e-5)
    layer = next(iter(mask_layers(masked).values()))
    assert isinstance(layer, MaskedBatchNorm2d) and layer.neuron_mask.requires_grad


def test_pruning_zeroes_gamma_and_keeps_beta(backdoored) -> None:
    model = backdoored[0]
    masks = {name: torch.ones(m.num_features) for name, m in mask_layers(with_masked_norm(model)).items()}
    first = next(iter(masks))
    masks[first][:3] = torch.tensor([0.0, 0.1, 0.3])
    pruned, n = prune_channels(model, masks, 0.2)
    layer, orig = dict(pruned.named_modules())[first], dict(model.named_modules())[first]
    assert n == 2 and layer.weight[:2].abs().sum() == 0 and torch.equal(layer.weight[2:], orig.weight[2:])
    assert torch.equal(layer.bias, orig.bias)


def test_rnp_records_its_curve_and_chooses_without_test_data(backdoored, embedded) -> None:
    model = backdoored[0]
    rnp = RNP(unlearn_lr=0.002, recover_epochs=5, selection="holdout", sweep_step=0.1)
    out = rnp(model, DefenseData(embedded.reserve, AugmentSpec(crop_pad=2), 10), torch.Generator().manual_seed(0))
    assert [p.params["threshold"] for p in out.curve] == pytest.approx([i / 10 for i in range(10)])
    counts = [p.params["pruned"] for p in out.curve]
    assert counts == sorted(counts)  # thresholds are cumulative
    info = out.info
    assert info["rule"] == "holdout" and info["holdout_images"] == 100
    assert info["selected_threshold"] in [p.params["threshold"] for p in out.curve]
    assert info["pruned"] == len(info["pruned_channels"])
    assert info["unlearn"]["epochs"] >= 1 and len(info["recover"]["acc_per_epoch"]) == 5


# The cheapest run of each defense: enough to reach every code path, not to remove a backdoor.
MINIMAL: dict[str, list[str]] = {
    "rnp": ["defense.unlearn_epochs=1", "defense.recover_epochs=1"],
    "anp": ["defense.iterations=2"],
    "ft": ["defense.epochs=1"],
    "fp": ["defense.epochs=1"],
    "nad": ["defense.teacher_epochs=1", "defense.epochs=1"],
    "ibau": ["defense.n_rounds=1", "defense.K=1"],
}
FAST_ARCHS = {"convnet"}  # the others (11M-parameter nets, 10-100 s each on 2 cores) run in the slow suite


@pytest.mark.parametrize(
    "arch",
    [a if a in FAST_ARCHS else pytest.param(a, marks=pytest.mark.slow) for a in group_options("arch")],
)
@pytest.mark.parametrize("name", DEFENSES)
def test_every_defense_runs_on_every_arch(name: str, arch: str, tmp_home) -> None:
    """Mask defenses swap their norm layer into any architecture; the rest are architecture-agnostic."""
    parts = build_parts(compose_cfg([f"defense={name}", f"arch={arch}", "dataset=cifar10", *MINIMAL.get(name, [])]))
    model = build_classifier(arch, 10, 3, [0.5] * 3, [0.25] * 3, **parts.arch.kwargs)
    gen = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(40) % 10)
    out = parts.defense(model, DefenseData(data, AugmentSpec(crop_pad=2), 10), gen)
    assert out.model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    for point in out.curve[:2]:
        assert point.build()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
