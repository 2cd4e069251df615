"""Defenses, parametrised over conf/defense/*.yaml: each lowers the ASR of a planted backdoor.

Defense parameters come from the YAML, shrunk only in epochs/iterations (tests/helpers/budgets.py) so the suite
stays fast.
"""

from __future__ import annotations

import copy

import pytest
import torch

from benchmark.core.archs import build_classifier
from benchmark.core.augment import AugmentSpec
from benchmark.core.data import ImageSet
from benchmark.core.evaluate import evaluate
from benchmark.run.config import build_run_config
from defenses.base import DefenseData
from defenses.masks import MaskedBatchNorm2d, mask_layers, prune_channels, with_masked_norm
from defenses.rnp import RNP
from tests.conftest import compose_cfg, group_options
from tests.helpers.budgets import BUDGETS

DEFENSES = group_options("defense")


def make_defense(name: str, *overrides: str):
    return build_run_config(compose_cfg([f"defense={name}", "experiment=quickstart", *overrides])).defense


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_lowers_asr_without_touching_the_input_model(name: str, backdoored, embedded, tmp_home) -> None:
    model, triggered, before = backdoored
    reference = copy.deepcopy(model.state_dict())
    defense = make_defense(name, *BUDGETS["defense"][name].efficacy)  # fewer iterations; the rest is the YAML's
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


FAST_ARCHS = {"convnet"}  # the others (11M-parameter nets, 10-100 s each on 2 cores) run in the slow suite


@pytest.mark.parametrize(
    "arch",
    [a if a in FAST_ARCHS else pytest.param(a, marks=pytest.mark.slow) for a in group_options("arch")],
)
@pytest.mark.parametrize("name", DEFENSES)
def test_every_defense_runs_on_every_arch(name: str, arch: str, tmp_home) -> None:
    """Mask defenses swap their norm layer into any architecture; the rest are architecture-agnostic."""
    parts = build_run_config(
        compose_cfg([f"defense={name}", f"arch={arch}", "dataset=cifar10", "debug=default"])  # the cheapest run
    )
    model = build_classifier(arch, 10, 3, [0.5] * 3, [0.25] * 3, **parts.arch.kwargs)
    gen = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(40) % 10)
    out = parts.defense(model, DefenseData(data, AugmentSpec(crop_pad=2), 10), gen)
    assert out.model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    for point in out.curve[:2]:
        assert point.build()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
