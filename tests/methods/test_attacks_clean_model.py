"""Attacks that start from a clean model: TrojanNN, label-consistent (CL), feature collision (FC), AWP.

Fast tests use the tiny context of `tests.conftest.attack_context` (a width-8 convnet trained for one epoch);
the slow ones implant each backdoor through the real pipeline on the embedded data.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from attacks.awp import AWP
from attacks.cl import LabelConsistent
from attacks.clean_model import HeadOnly, ProjectToClean, StartFromClean, head, penultimate
from attacks.fc import FeatureCollision
from attacks.poison import poison_train, poison_train_split
from attacks.trojan import Trojan, most_connected
from benchmark.core.archs import build_classifier, to_input
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError
from benchmark.core.training import TrainRecipe, train_classifier
from tests.conftest import attack_context


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labelled(n: int = 100, c: int = 1, size: int = 28) -> ImageSet:
    """Real embedded images from the tiny context (so the clean model's features mean something)."""
    data = attack_context(c, size).train
    return ImageSet(data.x[:n].clone(), data.y[:n].clone())


# --- shared helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["convnet", "resnet18", "mobilenet_v2"])
def test_penultimate_features_are_the_inputs_of_the_head(arch: str) -> None:
    model = build_classifier(arch, 7, 3, [0.5] * 3, [0.25] * 3).eval()
    x = torch.rand(2, 3, 32, 32)
    feats = penultimate(model, x)
    with torch.no_grad():
        assert feats.shape == (2, head(model).in_features)
        assert torch.allclose(head(model)(feats), model(x), atol=1e-5)


def test_start_from_clean_loads_the_clean_weights() -> None:
    ctx = attack_context(1, 28)
    model = ctx.new_model()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    StartFromClean(ctx.clean_model()).start(model)
    clean = ctx.clean_model().state_dict()
    assert all(torch.equal(v, clean[k]) for k, v in model.state_dict().items())


# --- TrojanNN ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trojan() -> Trojan:
    attack = Trojan(steps=200)
    attack.prepare(attack_context(1, 28))
    return attack


def test_trojan_excites_the_most_connected_neurons(trojan: Trojan) -> None:
    clean = attack_context(1, 28).clean_model()
    w = head(clean).weight.detach().abs().sum(0)
    assert set(trojan.neuron_index.tolist()) == set(w.topk(2).indices.tolist())
    assert torch.equal(most_connected(clean, 2), trojan.neuron_index)
    with pytest.raises(ConfigError, match=r"Trojan\.neurons=999 is out of range"):
        most_connected(clean, 999)
    start = Trojan(steps=0)
    start.prepare(attack_context(1, 28))
    before = start.activation(start.clean, start.patch.float() / 255, 28, 28)
    after = trojan.activation(trojan.clean, trojan.patch.float() / 255, 28, 28)
    assert after.sum() > before.sum() * 1.05  # optimising the patch raised the chosen neurons


def test_trojan_trigger_is_confined_to_its_square_mask(trojan: Trojan) -> None:
    x = labelled(8).x
    out = trojan.apply(x)
    k = trojan.side(28, 28)
    assert k == 7 and trojan.patch.shape == (1, 7, 7)  # 7% of 28x28
    assert trojan.side(32, 32) == 8 and trojan.side(224, 224) == 59  # the mask grows with the image
    changed = (out != x).any(0).any(0)  # (H, W)
    assert changed[: 28 - k].sum() == 0 and changed[:, : 28 - k].sum() == 0
    assert (out[:, :, -k:, -k:] == trojan.patch).all()  # the same optimised patch on every image


def test_trojan_trigger_state_round_trips_and_guards_its_shape(trojan: Trojan) -> None:
    restored = Trojan(steps=200)
    restored.load_trigger_state(trojan.trigger_state())
    x = labelled(4).x
    assert torch.equal(restored.apply(x), trojan.apply(x))
    assert torch.equal(restored.neuron_index, trojan.neuron_index)
    with pytest.raises(ConfigError, match="needs 'patch' and 'neurons'"):
        Trojan().load_trigger_state({"patch": trojan.patch})
    with pytest.raises(ConfigError, match="Trojan has no trigger yet"):
        Trojan().apply(x)
    with pytest.raises(ConfigError, match="optimised for another image size"):
        trojan.apply(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))


def test_trojan_retrains_the_clean_model_or_trains_from_scratch(trojan: Trojan) -> None:
    ctx = attack_context(1, 28)
    recipe = TrainRecipe(epochs=60, lr=0.1)
    assert isinstance(trojan.train_hook(ctx), StartFromClean)
    tuned = trojan.adjust_recipe(recipe)
    assert (tuned.epochs, tuned.lr, tuned.warmup_epochs) == (2, 0.01, 0.0)
    scratch = Trojan(retrain="scratch")
    assert scratch.train_hook(ctx) is None and scratch.adjust_recipe(recipe) == recipe
    with pytest.raises(ConfigError, match="needs prepare"):
        Trojan().train_hook(ctx)


# --- Label-consistent --------------------------------------------------------------------------------


def test_cl_trigger_is_the_authors_corner_pattern() -> None:
    x = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    out = LabelConsistent().apply(x)
    left = torch.tensor([[255, 0, 0], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    assert torch.equal(out[0, 1, :3, :3], left) and torch.equal(out[1, 2, -3:, :3], left)
    assert torch.equal(out[0, 0, :3, -3:], left.flip(1)) and torch.equal(out[0, 0, -3:, -3:], left.flip(1))
    assert (out != x).any(0).any(0).sum() == 36  # 4 corners x 9 pixels
    bottom = LabelConsistent(corners="bottom_right").apply(x)
    assert (bottom != x).any(0).any(0).sum() == 9 and torch.equal(bottom[0, 0, -3:, -3:], left.flip(1))
    faint = LabelConsistent(amplitude=16).apply(x)
    assert set(faint.unique().tolist()) == {112, 128, 144}  # +/- 16 instead of white / black
    big = LabelConsistent().apply(torch.full((1, 1, 224, 224), 128, dtype=torch.uint8))
    assert (big != 128).sum() == 4 * 21 * 21 and torch.equal(big[0, 0, :21:7, :21:7], left)  # 7 px cells


def test_cl_hardens_only_target_images_within_eps_and_keeps_labels() -> None:
    ctx = attack_context(1, 28)
    attack = LabelConsistent(poison_rate=0.05, target=3)
    attack.prepare(ctx)
    data = labelled(100)
    out = poison_train_split(data, attack, 10, gen())
    changed = (out.images.x != data.x).flatten(1).any(1)
    assert changed.sum() == 5 and (data.y[changed] == 3).all() and torch.equal(out.images.y, data.y)
    base = data.x[out.index]
    hard = attack.harden(base)
    assert (hard.int() - base.int()).abs().max() <= 16 and not torch.equal(hard, base)
    trigger = attack.pattern(base) != 0
    assert torch.equal(out.images.x[out.index][..., ~trigger], hard[..., ~trigger])  # PGD, then the trigger

    def loss(x: torch.Tensor) -> float:
        return F.cross_entropy(attack.clean(to_input(x)), torch.full((len(x),), 3)).item()

    assert loss(hard) > loss(base)  # harder for the clean model to classify as their (target) class
    with pytest.raises(ConfigError, match="needs prepare"):
        LabelConsistent().harden(base)


# --- Feature collision -------------------------------------------------------------------------------


def test_fc_poisons_collide_in_feature_space_within_their_budget() -> None:
    ctx = attack_context(1, 28)
    attack = FeatureCollision(eps=8.0, steps=30, lr=1.0)
    attack.prepare(ctx)
    data = labelled(200)
    base = data.x[data.y == 0][:8]
    g = gen(1)
    poisons = attack.apply_train(base, g)
    assert (poisons.int() - base.int()).abs().max() <= 8 and not torch.equal(poisons, base)
    # The same draw of target instances: a random non-target training image each, triggered.
    pick = torch.randint(0, len(attack.sources), (8,), generator=gen(1))
    goal = penultimate(attack.clean, to_input(attack.apply(attack.sources[pick])))
    with torch.no_grad():
        far = (penultimate(attack.clean, to_input(base)) - goal).pow(2).sum(1)
        near = (penultimate(attack.clean, to_input(poisons)) - goal).pow(2).sum(1)
    assert near.mean() < 0.9 * far.mean()
    assert torch.equal(poisons, attack.apply_train(base, gen(1)))  # deterministic by the generator


def test_fc_unbounded_variant_is_pulled_back_to_the_base_by_the_proximal_step() -> None:
    ctx = attack_context(1, 28)
    base = labelled(200).x[:4]
    moved = []
    for beta0 in (0.0, 1e6):
        attack = FeatureCollision(eps=None, beta0=beta0, steps=10, lr=1.0)
        attack.prepare(ctx)
        moved.append((attack.apply_train(base, gen()).int() - base.int()).abs().amax((1, 2, 3)))
    assert (moved[0] > 20).all()  # the watermark (30% of another image) and the collision steps
    assert (moved[1] <= 1).all()  # a huge beta keeps the poisons at their bases


def test_fc_trigger_is_a_checkerboard_with_three_times_larger_cells() -> None:
    for size, side in [(28, 9), (32, 9), (224, 63)]:
        x = torch.zeros(1, 1, size, size, dtype=torch.uint8)
        changed = (FeatureCollision().apply(x) != x)[0, 0]
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        assert (rows.min(), cols.min()) == (size - side, size - side)


def test_head_only_retraining_leaves_the_features_as_they_were() -> None:
    ctx = attack_context(1, 28)
    clean = ctx.clean_model()
    model = ctx.new_model()
    recipe = TrainRecipe(epochs=1, batch_size=100, lr=0.5, warmup_epochs=0.0)
    train_classifier(model, labelled(300), recipe, ctx.augment, gen(), hook=HeadOnly(clean))
    state, before = model.state_dict(), clean.state_dict()
    tail = {f"net.classifier.{k}" for k in ("weight", "bias")}
    assert all(torch.equal(v, before[k]) for k, v in state.items() if k not in tail)  # BN statistics too
    assert not torch.equal(state["net.classifier.weight"], before["net.classifier.weight"])
    assert all(p.requires_grad for p in model.parameters())  # trainable again for defenses


# --- AWP ---------------------------------------------------------------------------------------------


def test_awp_perturbs_the_clean_weights_within_the_bound() -> None:
    ctx = attack_context(1, 28)
    attack = AWP(eps=0.005, poison_rate=0.1)
    attack.prepare(ctx)
    poisoned, _ = poison_train(labelled(300), attack, 10, gen())
    recipe = attack.adjust_recipe(TrainRecipe(epochs=60, lr=0.1, weight_decay=5e-4))
    assert (recipe.epochs, recipe.lr, recipe.weight_decay, recipe.schedule) == (3, 0.05, 0.0, "constant")
    hook = attack.train_hook(ctx)
    assert isinstance(hook, ProjectToClean)
    model = ctx.new_model()
    fast = TrainRecipe(epochs=1, batch_size=100, lr=0.5, weight_decay=0.0, warmup_epochs=0.0, schedule="constant")
    train_classifier(model, poisoned, fast, ctx.augment, gen(), hook=hook)
    clean = dict(ctx.clean_model().named_parameters())
    delta = torch.cat([(p.detach() - clean[k]).abs().flatten() for k, p in model.named_parameters()])
    assert delta.max() <= 0.005 + 1e-6 and (delta > 0.004).float().mean() > 0.1  # moved, up to the bound
    with pytest.raises(ConfigError, match="AWP needs prepare"):
        AWP().train_hook(ctx)


# --- Slow: each attack implants a backdoor through the real pipeline --------------------------------
