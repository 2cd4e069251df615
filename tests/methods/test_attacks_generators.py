"""Attacks with a learned or generated trigger: Input-aware (dynamic), LIRA, DFST.

Fast tests run the generators and training hooks for a few steps on 64 embedded images; the slow ones
implant each backdoor through the real pipeline on the embedded data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from attacks.badnets import BadNets
from attacks.base import AttackContext
from attacks.dfst import DFST, DetoxHook, FeatureInjector, ssim
from attacks.dynamic import InputAware, InputAwareHook
from attacks.generators import EncoderDecoder, quantise, seeded
from attacks.lira import LIRA, LiraHook
from attacks.poison import poison_for_training, poison_train_split
from benchmark.core.archs import to_input
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError
from benchmark.core.training import TrainRecipe, train_classifier
from tests.conftest import attack_context

SMALL_DYNAMIC = {"width": 4, "depth": 2, "mask_epochs": 1}
SMALL_LIRA = {"width": 4, "depth": 2}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_context(n: int = 64, batch: int = 32, epochs: int = 1) -> AttackContext:
    """The conftest context (1 x 28 x 28 embedded images) cut to `n` images: `n // batch` steps an epoch."""
    ctx = attack_context(1, 28)
    train = ImageSet(ctx.train.x[:n].clone(), ctx.train.y[:n].clone())
    recipe = TrainRecipe(epochs=epochs, batch_size=batch, lr=0.05, warmup_epochs=0.0)
    return dataclasses.replace(ctx, train=train, recipe=recipe, gen=gen(1))


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


# --- shared generator pieces -------------------------------------------------------------------------


@pytest.mark.parametrize("c,size", [(1, 28), (3, 32), (3, 33)])
@pytest.mark.parametrize("skips", [False, True])
def test_encoder_decoder_maps_any_image_size_back_to_itself(c: int, size: int, skips: bool) -> None:
    net = EncoderDecoder(c, 2, width=4, depth=3, skips=skips)
    assert net(torch.rand(2, c, size, size)).shape == (2, 2, size, size)


def test_seeded_init_fixes_the_weights_without_the_global_generator() -> None:
    state = torch.get_rng_state()
    a, b, other = (seeded(lambda: EncoderDecoder(1, 1, 4, 2, False), s) for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), other.parameters(), strict=True))


def test_quantise_rounds_to_the_uint8_grid_and_passes_the_gradient_straight() -> None:
    x = torch.rand(4, 1, 5, 5, requires_grad=True)
    q = quantise(x)
    assert torch.allclose(q * 255, (q * 255).round(), atol=1e-4) and (q - x).abs().max() <= 0.5 / 255 + 1e-6
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_hook_attacks_leave_the_training_set_clean_and_others_poison_as_before() -> None:
    data = ImageSet(torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8), torch.arange(100) % 10)
    g = gen()
    out = poison_for_training(data, InputAware(), 10, g)
    assert torch.equal(out.images.x, data.x) and torch.equal(out.images.y, data.y) and len(out.index) == 0
    assert torch.equal(g.get_state(), gen().get_state())  # no draw: later draws are unchanged
    a, b = poison_for_training(data, BadNets(), 10, gen()), poison_train_split(data, BadNets(), 10, gen())
    assert torch.equal(a.images.x, b.images.x) and torch.equal(a.index, b.index)


# --- Input-aware (dynamic) ----------------------------------------------------------------------------


@pytest.fixture
def dynamic() -> InputAware:
    attack = InputAware(**SMALL_DYNAMIC)
    attack.prepare(tiny_context())
    return attack


def test_dynamic_patterns_and_masks_are_per_image_and_bounded(dynamic: InputAware) -> None:
    images = tiny_context().train.x[:8]
    out = dynamic.apply(images)  # puts the generators in eval mode
    x = to_input(images)
    with torch.no_grad():
        pattern, mask = dynamic.pattern(x), dynamic.mask(x)
    assert pattern.shape == x.shape and mask.shape == (8, 1, 28, 28)
    assert pattern.min() >= 0 and pattern.max() <= 1 and mask.min() >= 0 and mask.max() <= 1
    assert not torch.equal(pattern[0], pattern[1])  # input-aware: each image its own trigger
    far = (mask < 1e-4).expand_as(out)
    assert torch.equal(out[far], images[far])  # unchanged wherever the mask is ~0


def test_dynamic_hook_mixes_attack_cross_and_clean_samples(dynamic: InputAware) -> None:
    ctx = tiny_context()
    dynamic.poison_rate, dynamic.cross_rate = 0.25, 0.25
    hook = dynamic.train_hook(ctx)
    assert isinstance(hook, InputAwareHook)
    for net in dynamic.nets():
        net.eval()  # BN on running statistics: the same image gets the same trigger in any batch
    x, y = to_input(ctx.train.x[:32]), ctx.train.y[:32]
    out_x, out_y = hook.batch(x, y, 0)
    assert out_x.shape == x.shape and (out_y[:8] == 0).all()  # attack mode: relabelled
    assert torch.equal(out_y[8:], y[8:]) and torch.equal(out_x[16:], x[16:])  # cross keeps labels; clean as is
    partner = x.roll(1, 0)[8:16]  # cross mode: the trigger made for ANOTHER image of the batch
    with torch.no_grad():
        own, borrowed = dynamic.triggered(x[8:16], x[8:16]), dynamic.triggered(x[8:16], partner)
    assert (out_x[8:16] - borrowed).abs().max() <= 1 / 255 and (out_x[8:16] - own).abs().max() > 0.1
    assert torch.isfinite(hook.last_diversity)


def test_dynamic_training_pretrains_the_mask_then_trains_only_the_pattern(dynamic: InputAware) -> None:
    ctx = tiny_context()
    pattern_net, mask_net = dynamic.nets()
    hook = dynamic.train_hook(ctx)
    model = ctx.new_model()
    mask_init, pattern_init = params(mask_net), params(pattern_net)
    hook.start(model)  # stage 1: the mask generator alone
    assert changed(mask_init, mask_net) and not changed(pattern_init, pattern_net)
    mask_trained = params(mask_net)
    dynamic.mask_epochs = 0  # train_classifier calls start() again: skip a second pre-training
    train_classifier(model, ctx.train, ctx.recipe, ctx.augment, gen(), hook=hook)  # 2 joint steps
    assert changed(pattern_init, pattern_net) and not changed(mask_trained, mask_net)


def test_dynamic_trigger_state_round_trip_restores_the_same_trigger(dynamic: InputAware) -> None:
    x = tiny_context().train.x[:8]
    restored = InputAware(**SMALL_DYNAMIC)
    restored.load_trigger_state(dynamic.trigger_state())
    assert torch.equal(restored.apply(x), dynamic.apply(x))
    with pytest.raises(ConfigError, match="does not fit its 'pattern' network"):
        InputAware(width=8, depth=2).load_trigger_state(dynamic.trigger_state())
    with pytest.raises(ConfigError, match="lacks the generators"):
        InputAware().load_trigger_state({})
    with pytest.raises(ConfigError, match="has no generators yet"):
        InputAware().apply(x)


def test_dynamic_rates_share_one_batch() -> None:
    with pytest.raises(ConfigError, match=r"poison_rate \+ cross_rate = 1.2 is out of range"):
        InputAware(poison_rate=0.6, cross_rate=0.6)


# --- LIRA ----------------------------------------------------------------------------------------------


@pytest.fixture
def lira() -> LIRA:
    attack = LIRA(**SMALL_LIRA, eps=0.03)
    attack.prepare(tiny_context())
    return attack


def test_lira_perturbation_stays_within_eps(lira: LIRA) -> None:
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    diff = (lira.apply(x).int() - x.int()).abs()
    assert diff.max() <= round(0.03 * 255) and diff.float().mean() > 1  # bounded, but not nothing
    lira.test_eps = 0.01
    assert (lira.apply(x).int() - x.int()).abs().max() <= round(0.01 * 255)


@pytest.mark.parametrize("lookahead", [True, False])
def test_lira_stage1_trains_the_generator_and_stage2_keeps_it(lira: LIRA, lookahead: bool) -> None:
    ctx = tiny_context(n=96)  # 3 steps: stage 1 is the first one
    lira.lookahead, lira.stage1_fraction = lookahead, 0.34
    hook = lira.train_hook(ctx)
    assert isinstance(hook, LiraHook) and hook.stage1_steps == 1
    model = ctx.new_model()
    hook.start(model)
    x, y = to_input(ctx.train.x[:32]), ctx.train.y[:32]
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before = params(lira.net())
    out_x, out_y = hook.batch(x, y, 0)
    assert changed(before, lira.net())  # stage 1: a generator step per batch
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_model.items())  # classifier untouched
    assert out_x.shape == (64, 1, 28, 28) and torch.equal(out_y[:32], y) and (out_y[32:] == 0).all()  # alpha 0.5
    assert (out_x[32:] - x).abs().max() <= round(0.03 * 255) / 255 + 1e-6
    after_stage1 = params(lira.net())
    hook.batch(x, y, 1)
    assert not changed(after_stage1, lira.net())  # stage 2: fixed
    lira.poison_rate = 0.2
    assert len(hook.batch(x, y, 1)[0]) == 32 + 8  # 8 / 40 of the loss on triggered copies


def test_lira_trigger_state_round_trip_restores_the_same_trigger(lira: LIRA) -> None:
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    restored = LIRA(**SMALL_LIRA, eps=0.03)
    restored.load_trigger_state(lira.trigger_state())
    assert torch.equal(restored.apply(x), lira.apply(x))
    with pytest.raises(ConfigError, match="needs the generator's weights"):
        LIRA().load_trigger_state({"patch": torch.zeros(1)})


# --- DFST ----------------------------------------------------------------------------------------------


def test_dfst_style_is_a_bounded_input_dependent_transform() -> None:
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = DFST().apply(x)
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(DFST(alpha=0.0).apply(x), x)
    shift = out.int() - x.int()
    assert not torch.equal(shift[0], shift[1])  # not a fixed additive pattern: it depends on the image
    flat = torch.full((1, 1, 32, 32), 128, dtype=torch.uint8)
    textured, plain = DFST().apply(flat), DFST(texture=0.0).apply(flat)
    assert plain.unique().numel() == 1 and textured.unique().numel() > 5  # the strokes carry the texture
    colour = DFST(alpha=1.0).stylise(torch.full((1, 3, 8, 8), 0.5))
    assert colour[0, 0].mean() > colour[0, 2].mean()  # sunrise: warm (red above blue) at mid tones


def test_feature_injector_starts_as_the_identity_and_ssim_of_equal_images_is_one() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(FeatureInjector(3, 5)(x), x)
    assert torch.isclose(ssim(x, x), torch.tensor(1.0), atol=1e-4) and ssim(x, torch.rand_like(x)) < 0.5
    assert DFST().window(32, 32) == 11 and DFST().window(224, 224) == 77 and DFST().window(28, 28) == 11


def test_dfst_detox_round_finds_neurons_and_adds_true_label_detoxicants() -> None:
    ctx = tiny_context(n=64, epochs=2)
    attack = DFST(detox_fraction=0.5, detox_epochs=2, detox_rate=0.25)
    hook = attack.train_hook(ctx)
    assert isinstance(hook, DetoxHook) and DFST(detox=False).train_hook(ctx) is None
    model = ctx.new_model()
    x, y = to_input(ctx.train.x[:32]), ctx.train.y[:32]
    assert hook.batch(x, y, 0)[0] is x  # no injector before the first round
    hook.after_step(model, 0)  # mid-epoch: nothing
    assert hook.injector is None
    model.train()
    hook.after_step(model, 1)  # end of epoch 1 of 2 (2 steps an epoch): a detox round
    assert model.training and hook.injector is not None and len(hook.neurons) == 1
    assert not torch.equal(hook.injector.delta, FeatureInjector(1, 11).delta)  # the injector was trained
    out_x, out_y = hook.batch(x, y, 2)
    assert out_x.shape == (40, 1, 28, 28) and torch.equal(out_x[:32], x)
    assert set(out_y[32:].tolist()) <= set(ctx.train.y.tolist())  # true labels of clean images, not relabelled
    last = dataclasses.replace(ctx, recipe=dataclasses.replace(ctx.recipe, epochs=1))
    final = attack.train_hook(last)
    final.after_step(model, 1)  # the last step of training: no round
    assert final.injector is None


# --- the generic face: cache round trip through the model cache's format --------------------------------


def test_learned_triggers_survive_the_cache_format(dynamic: InputAware, tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save({"trigger": dynamic.trigger_state()}, path)
    restored = InputAware(**SMALL_DYNAMIC)
    restored.load_trigger_state(torch.load(path, weights_only=True)["trigger"])
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(restored.apply(x), dynamic.apply(x))
    assert DFST().trigger_state() == {}
