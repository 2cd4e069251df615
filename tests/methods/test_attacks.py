"""Attack properties, parametrised over conf/attack/*.yaml so a new attack is tested for free."""

from __future__ import annotations

import pytest
import torch

from attacks.badnets import BadNets
from attacks.base import Attack
from attacks.poison import choose_poison, poison_train, poison_train_split, triggered_test
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError
from benchmark.run.config import build_run_config
from tests.conftest import compose_cfg, group_options, prepared

ATTACKS = [a for a in group_options("attack") if a != "none"]  # none has no trigger: tests/e2e/test_clean_baseline.py


def make_attack(name: str, *overrides: str, channels: int = 3, size: int = 32, fresh: bool = False) -> Attack:
    """The attack as configured, prepared (if it learns anything) for images of this shape."""
    attack = build_run_config(compose_cfg([f"attack={name}", "dataset=embedded", *overrides])).attack
    return prepared(attack, channels, size, fresh)


def images(n: int = 64, c: int = 3, size: int = 32, seed: int = 0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=gen)
    return ImageSet(x, torch.arange(n) % 10)


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("c,size", [(1, 28), (3, 32), (3, 64)])
def test_trigger_keeps_shape_dtype_and_device(name: str, c: int, size: int, tmp_home) -> None:
    x = images(8, c, size).x
    out = make_attack(name, channels=c, size=size).apply(x)
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    assert not torch.equal(out, x)


@pytest.mark.parametrize("name", ATTACKS)
def test_trigger_is_deterministic(name: str, tmp_home) -> None:
    x = images(8).x
    assert torch.equal(make_attack(name).apply(x), make_attack(name, fresh=True).apply(x))  # prepared twice


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("mode", ["all2one", "all2all"])
def test_poison_count_and_labels(name: str, mode: str, tmp_home) -> None:
    if make_attack(name).clean_label and mode == "all2all":
        with pytest.raises(ConfigError, match="clean-label: label_mode must be 'all2one'"):
            make_attack(name, f"attack.label_mode={mode}")
        return
    attack = make_attack(name, f"attack.label_mode={mode}", "attack.poison_rate=0.05")
    data = images(200)
    out = poison_train_split(data, attack, 10, torch.Generator().manual_seed(0))
    poisoned, index, cover = out.images, out.index, out.cover
    assert len(index) == 10 and len(set(index.tolist())) == 10
    assert all(not torch.equal(poisoned.x[i], data.x[i]) for i in index)
    # Cover samples (WaNet's noise mode, A-Blend's regularisation): triggered, label kept, disjoint from index.
    assert len(cover) == round(attack.cover_fraction() * 200) and len(set(cover.tolist())) == len(cover)
    assert not set(cover.tolist()) & set(index.tolist())
    assert torch.equal(poisoned.y[cover], data.y[cover])
    assert all(not torch.equal(poisoned.x[i], data.x[i]) for i in cover)
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[index] = False
    untouched[cover] = False
    assert torch.equal(poisoned.x[untouched], data.x[untouched])
    assert torch.equal(poisoned.y[untouched], data.y[untouched])
    if attack.clean_label:
        assert (data.y[index] == attack.target).all() and torch.equal(poisoned.y, data.y)
    elif mode == "all2one":
        assert (poisoned.y[index] == attack.target).all() and (data.y[index] != attack.target).all()
    else:
        assert torch.equal(poisoned.y[index], (data.y[index] + 1) % 10)
    again, index2 = poison_train(data, attack, 10, torch.Generator().manual_seed(0))
    assert torch.equal(index, index2) and torch.equal(again.x, poisoned.x) and torch.equal(again.y, poisoned.y)


@pytest.mark.parametrize("name", ATTACKS)
def test_triggered_test_set_excludes_images_already_of_the_target(name: str, tmp_home) -> None:
    attack = make_attack(name)
    data = images(100)
    trig = triggered_test(data, attack, 10)
    assert len(trig.images) == 90 and (trig.true_y != attack.target).all()
    assert (trig.images.y == attack.target).all()


def test_badnets_changes_only_the_reference_patch() -> None:
    x = images(4, 3, 32).x
    out = BadNets().apply(x)
    changed = (out != x).any(0).any(0)  # (H, W)
    assert changed[:29].sum() == 0 and changed[:, :29].sum() == 0
    expected = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    assert all(torch.equal(out[i, c, 29:, 29:], expected) for i in range(4) for c in range(3))


def test_badnets_patch_scales_with_image_size() -> None:
    out = BadNets().apply(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    assert (out[0, 0] != 0).nonzero().min(0).values.tolist() == [203, 203]  # 7 px cells: a 21x21 patch
    assert torch.equal(BadNets().patch(224, torch.device("cpu"))[::7, ::7], BadNets().patch(32, torch.device("cpu")))


def test_poison_rate_beyond_the_eligible_images_is_refused() -> None:
    class CleanLabel(BadNets):
        clean_label = True

    y = torch.arange(100) % 10
    with pytest.raises(ConfigError, match=r"poison_rate=0\.5 asks for 50 poisoned images but only 10"):
        choose_poison(y, CleanLabel(poison_rate=0.5), torch.Generator())


def test_attacks_without_cover_or_random_triggers_draw_only_the_poison_choice() -> None:
    """BadNets poisoning leaves the generator where choosing the indices did, so later draws
    (the defense data subset) are as they were before cover samples existed."""
    data = images(200)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    poison_train(data, BadNets(), 10, g1)
    choose_poison(data.y, BadNets(), g2)
    assert torch.equal(g1.get_state(), g2.get_state())
