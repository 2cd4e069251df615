"""Trigger-specific properties of the fixed-trigger attacks, and (slow) that each one implants a backdoor."""

from __future__ import annotations

import math

import pytest
import torch

from attacks.ablend import AdaptiveBlend
from attacks.blend import Blend
from attacks.poison import poison_train, poison_train_split, triggered_test
from attacks.sig import SIG
from attacks.wanet import WaNet
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError


def images(n: int = 16, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=gen)


def labelled(n: int = 200, seed: int = 0) -> ImageSet:
    return ImageSet(images(n, 3, 32, seed), torch.arange(n) % 10)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- Blend -----------------------------------------------------------------------------------------


def test_blend_with_alpha_zero_is_the_identity() -> None:
    x = images()
    assert torch.equal(Blend(alpha=0.0).apply(x), x)


def test_blend_is_the_convex_mix_with_a_fixed_pattern() -> None:
    x = images(4)
    attack = Blend(alpha=0.2)
    p = attack.pattern(x)
    assert p.shape == (1, 3, 32, 32) and p.min() >= 0 and p.max() <= 255
    expected = (0.8 * x.float() + 0.2 * p).round().to(torch.uint8)
    assert (attack.apply(x).int() - expected.int()).abs().max() <= 1  # float rounding only
    assert torch.equal(Blend(alpha=1.0).apply(x)[0], Blend(alpha=1.0).apply(x)[1])  # the pattern itself
    assert not torch.equal(Blend(pattern_seed=1).pattern(x), p)


def test_blend_pattern_scales_with_image_size() -> None:
    x = torch.zeros(1, 1, 224, 224, dtype=torch.uint8)
    p = Blend().pattern(x)
    assert p.shape == (1, 1, 224, 224)
    assert torch.equal(p[..., ::7, ::7], Blend().pattern(torch.zeros(1, 1, 32, 32)))  # 7x7 blocks of the 32 px draw


# --- SIG -------------------------------------------------------------------------------------------


def test_sig_adds_the_horizontal_sinusoid_and_clips() -> None:
    x = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    out = SIG().apply(x)
    j = torch.arange(32).float()
    expected = (128 + 40 * torch.sin(2 * math.pi * j * 6 / 32)).round()
    assert torch.equal(out[0, 0, 5], expected.to(torch.uint8)) and (out == out[:, :, :1]).all()  # same every row
    assert SIG().apply(torch.full((1, 1, 8, 8), 250, dtype=torch.uint8)).max() == 255
    assert SIG().apply(torch.zeros(1, 1, 8, 8, dtype=torch.uint8)).min() == 0


def test_sig_poisons_only_target_class_training_images_and_keeps_labels() -> None:
    data = labelled()
    out = poison_train_split(data, SIG(target=3), 10, gen())
    changed = (out.images.x != data.x).flatten(1).any(1)
    assert changed.sum() == 20 and (data.y[changed] == 3).all()  # null rate: every target-class image
    assert torch.equal(out.images.y, data.y) and len(out.cover) == 0
    trig = triggered_test(data, SIG(target=3), 10)
    assert len(trig.images) == 180 and (trig.true_y != 3).all()


def test_sig_refuses_more_poison_than_the_target_class_holds() -> None:
    with pytest.raises(ConfigError, match=r"poison_rate=0\.2 asks for 40 poisoned images but only 20"):
        poison_train(labelled(), SIG(poison_rate=0.2), 10, gen())


# --- WaNet -----------------------------------------------------------------------------------------


def test_wanet_with_zero_strength_is_the_identity() -> None:
    for c, size in [(1, 28), (3, 32), (3, 224)]:
        x = images(4, c, size)
        assert torch.equal(WaNet(s=0.0).apply(x), x)


def test_wanet_warp_is_small_smooth_and_fixed_by_its_seed() -> None:
    attack = WaNet()
    grid = attack.grid(32, 32, torch.device("cpu"))
    identity = WaNet(s=0.0).grid(32, 32, torch.device("cpu"))
    shift_px = (grid - identity).abs() * 31 / 2  # grid units -> pixels
    assert 0.05 < shift_px.mean() < 1.0 and shift_px.max() < 3  # imperceptible: about a quarter pixel on average
    assert not torch.equal(WaNet(field_seed=1).grid(32, 32, torch.device("cpu")), grid)


def test_wanet_cover_samples_get_a_noisy_warp_and_keep_their_labels() -> None:
    data = labelled()
    attack = WaNet(poison_rate=0.05)
    out = poison_train_split(data, attack, 10, gen())
    assert len(out.index) == 10 and len(out.cover) == 20  # cross ratio 2
    assert torch.equal(out.images.y[out.cover], data.y[out.cover])
    cover_x = data.x[out.cover]
    assert not torch.equal(out.images.x[out.cover], attack.apply(cover_x))  # noise on top of the warp
    assert torch.equal(attack.apply_cover(cover_x, gen(1)), attack.apply_cover(cover_x, gen(1)))
    assert not torch.equal(attack.apply_cover(cover_x, gen(1)), attack.apply_cover(cover_x, gen(2)))
    assert torch.equal(out.images.x[out.index], attack.apply(data.x[out.index]))  # payload: the exact warp


# --- Adaptive-Blend --------------------------------------------------------------------------------


def test_ablend_train_trigger_is_a_weaker_partial_blend_of_the_test_trigger() -> None:
    x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    attack = AdaptiveBlend()
    test_x, train_x = attack.apply(x), attack.apply_train(x, gen())
    assert not torch.equal(train_x, test_x)
    assert torch.equal(test_x, Blend(alpha=0.2).apply(x))  # test time: the whole trigger at alpha 0.2
    on = (train_x != 0).any(1)  # (N, H, W): pixels the partial trigger reached
    frac = on.float().mean((1, 2))
    assert ((frac > 0.4) & (frac <= 0.5)).all()  # 8 of 16 tiles (a few pattern pixels round to 0)
    kept = train_x.float()[on[:, None].expand_as(train_x)]
    full = (attack.pattern(x) * 0.15).round().expand_as(train_x)[on[:, None].expand_as(train_x)]
    assert torch.equal(kept, full)  # alpha 0.15 where a tile is kept
    masks = attack.piece_masks(8, 32, 32, gen())
    assert (masks.sum((1, 2, 3)) == 8 * 64).all() and len({tuple(m.flatten().tolist()) for m in masks}) > 1


def test_ablend_regularisation_samples_keep_their_labels() -> None:
    data = labelled()
    out = poison_train_split(data, AdaptiveBlend(poison_rate=0.05, cover_rate=0.05), 10, gen())
    assert len(out.index) == 10 and len(out.cover) == 10
    assert torch.equal(out.images.y[out.cover], data.y[out.cover]) and (out.images.y[out.index] == 0).all()
    assert (out.images.x[out.cover] != data.x[out.cover]).flatten(1).any(1).all()


def test_ablend_pieces_must_tile_a_square_grid() -> None:
    with pytest.raises(ConfigError, match="pieces=10 is invalid"):
        AdaptiveBlend(pieces=10)


# --- Shared poisoning --------------------------------------------------------------------------------


def test_cover_samples_refused_when_the_training_set_cannot_hold_them() -> None:
    with pytest.raises(ConfigError, match="asks for 160 cover images but only 100 are left"):
        poison_train(labelled(), WaNet(poison_rate=0.5, cross_ratio=1.6), 10, gen())


def test_poisoning_is_deterministic_by_seed_and_varies_with_it() -> None:
    data, attack = labelled(), AdaptiveBlend(poison_rate=0.05, cover_rate=0.05)
    a, b, c = (poison_train_split(data, attack, 10, gen(s)) for s in (0, 0, 1))
    assert torch.equal(a.images.x, b.images.x) and torch.equal(a.cover, b.cover)
    assert not torch.equal(a.index, c.index)
