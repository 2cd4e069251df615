"""ANP and Fine-Pruning specifics: what they prune, what they record, that pruning sticks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.core.archs import to_input
from benchmark.core.augment import AugmentSpec
from benchmark.core.evaluate import accuracy
from defenses.anp import ANP
from defenses.base import DefenseData
from defenses.fp import FinePruning, features, head_accuracy, last_linear, mean_features, prune_features
from defenses.masks import mask_layers, with_masked_norm


def data_of(embedded, n: int = 200) -> DefenseData:
    return DefenseData(embedded.reserve.subset(torch.arange(n)), AugmentSpec(crop_pad=2), 10)


def test_fp_mean_features_are_the_pooled_last_layer_activations(backdoored, embedded) -> None:
    model = backdoored[0].eval()
    x = embedded.reserve.x[:50]
    head = last_linear(model)
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    with torch.no_grad():
        model(to_input(x))
    handle.remove()
    assert torch.allclose(mean_features(model, head, x, batch_size=16), seen[0].mean(0), atol=1e-5)
    assert (seen[0] >= 0).all()  # after ReLU: "dormant" means near zero


def test_fp_holdout_accuracy_from_features_matches_the_pruned_model(backdoored, embedded) -> None:
    model = backdoored[0]
    head, held = last_linear(model), embedded.reserve.subset(torch.arange(300))
    channels = torch.tensor([0, 3, 5, 9, 17])
    direct = accuracy(prune_features(model, channels), held)
    assert head_accuracy(head, features(model, head, held.x), held.y, channels) == pytest.approx(direct, abs=1e-6)


def test_fp_prunes_dormant_channels_within_the_holdout_bound_and_keeps_them_pruned(backdoored, embedded) -> None:
    model = backdoored[0]
    fp = FinePruning(epochs=1, max_acc_drop=0.1)
    out = fp(model, data_of(embedded), torch.Generator().manual_seed(0))
    info = out.info
    pruned = torch.tensor(info["pruned_channels"], dtype=torch.long)
    assert info["pruned"] == len(pruned) > 0 and info["channels"] == last_linear(model).in_features
    assert last_linear(out.model).weight[:, pruned].abs().sum() == 0  # still zero after fine-tuning
    accs = {int(k): v for k, v in info["holdout_acc_by_pruned"].items()}
    assert accs[info["pruned"]] >= 0.9 * accs[0] - 1e-9  # the kept model is within the bound
    beyond = [n for n in accs if n > info["pruned"]]
    assert not beyond or accs[min(beyond)] < 0.9 * accs[0]  # and the next step broke it
    assert [p.params["fraction"] for p in out.curve] == pytest.approx([i / 20 for i in range(19)])


def test_fp_refuses_a_model_without_a_linear_head() -> None:
    with pytest.raises(Exception, match="no Linear layer"):
        last_linear(nn.Sequential(nn.Conv2d(1, 2, 3)))


@pytest.mark.parametrize("selection", ["threshold", "count"])
def test_anp_masks_stay_in_range_and_selection_prunes_what_it_says(selection: str, backdoored, embedded) -> None:
    model = backdoored[0]
    anp = ANP(iterations=5, selection=selection, prune_count=7, sweep_step=0.3)
    out = anp(model, data_of(embedded), torch.Generator().manual_seed(0))
    info = out.info
    assert info["rule"] == selection and info["iterations"] == 5
    layers = mask_layers(with_masked_norm(out.model))
    zero_gamma = sum(int((m.weight == 0).sum()) for m in layers.values())
    if selection == "count":
        assert info["pruned"] == 7 == zero_gamma
    else:
        assert info["selected_threshold"] == 0.2 and info["pruned"] == zero_gamma
    assert [p.params["threshold"] for p in out.curve] == pytest.approx([0.0, 0.3, 0.6, 0.9])


def test_anp_without_noise_learns_masks_on_the_clean_loss_only(backdoored, embedded) -> None:
    """eps = 0: no perturbation, and the mask loss is the clean CE alone (alpha is irrelevant)."""
    model = backdoored[0]
    anp = ANP(iterations=3, eps=0.0)
    fit = data_of(embedded)
    masks, info = anp.optimize_masks(model, fit, torch.Generator().manual_seed(0))
    assert info["mean_perturbed_loss"] == 0.0
    values = torch.cat([m.flatten() for m in masks.values()])
    assert values.min() >= 0 and values.max() <= 1
