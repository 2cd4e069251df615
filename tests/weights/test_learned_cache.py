"""The learned-mask cache: a post-hoc knob reuses the masks bit for bit; anything that changes them does not;
a damaged or foreign entry is learned again."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch

from benchmark.core.augment import AugmentSpec
from benchmark.core.compilation import Compilation
from benchmark.weights.checkpoint import encode_safetensors
from benchmark.weights.learned_cache import LearnedCache, entry_key, key_parts
from defenses.anp import ANP
from defenses.base import DefenseData
from defenses.rnp import RNP


def data_of(embedded, store: LearnedCache | None, n: int = 120) -> DefenseData:
    return DefenseData(embedded.reserve.subset(torch.arange(n)), AugmentSpec(crop_pad=2), 10, store=store)


def run(defense, model, embedded, store, seed: int = 0):
    return defense(model, data_of(embedded, store), torch.Generator().manual_seed(seed))


def state(out) -> dict[str, torch.Tensor]:
    return out.model.state_dict()


def same_weights(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def entries(root: Path) -> list[Path]:
    return sorted(root.glob("*.safetensors"))


def test_a_post_hoc_knob_reuses_the_masks_and_gives_what_learning_gives(backdoored, embedded, tmp_path) -> None:
    model, store = backdoored[0], LearnedCache(tmp_path, {"device": "cpu"})
    direct = run(ANP(iterations=4, prune_threshold=0.5), model, embedded, None)
    first = run(ANP(iterations=4, prune_threshold=0.3), model, embedded, store)
    second = run(ANP(iterations=4, prune_threshold=0.5, selection="threshold", sweep_step=0.3), model, embedded, store)
    assert first.info["learned_masks"]["reused"] is False
    assert second.info["learned_masks"] == {
        "reused": True,
        "entry": first.info["learned_masks"]["entry"],
        "learned_seconds": first.info["learned_masks"]["learned_seconds"],
        "learned_on": {"device": "cpu"},
    }
    assert len(entries(tmp_path)) == 1
    assert same_weights(state(second), state(direct))  # the cached masks are the learned ones, bit for bit
    assert second.info["pruned_channels"] == direct.info["pruned_channels"]
    assert second.info["seconds"] == first.info["seconds"]  # the learning's own record, as it was
    strip = {"learned_masks", "seconds"}
    assert {k: v for k, v in second.info.items() if k not in strip} == {
        k: v for k, v in direct.info.items() if k not in strip
    }


@pytest.mark.parametrize(
    ("change", "value"), [("eps", 0.3), ("iterations", 5), ("seed", 1), ("selection", "holdout"), ("model", None)]
)
def test_what_changes_the_masks_learns_them_again(change: str, value, backdoored, embedded, tmp_path) -> None:
    store = LearnedCache(tmp_path, {})
    run(ANP(iterations=4), backdoored[0], embedded, store)
    model, seed, knobs = backdoored[0], 0, {"iterations": 4}
    if change == "model":
        model = copy.deepcopy(backdoored[0])
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)
    elif change == "seed":
        seed = 1
    else:
        knobs[change] = value
    out = run(ANP(**knobs), model, embedded, store, seed)
    assert out.info["learned_masks"]["reused"] is False
    assert len(entries(tmp_path)) == 2


def test_a_compiled_run_has_its_own_key_and_eager_keys_stay_as_they_were(backdoored, embedded) -> None:
    """Compiled kernels move the masks' last digits, so `compile` is part of the key; eager keys name no mode."""
    eager = data_of(embedded, None)
    compiled = dataclasses.replace(eager, compilation=Compilation("default"))
    gen = torch.Generator().manual_seed(0)
    parts = key_parts("defenses.anp.ANP", {"iterations": 4}, backdoored[0], eager, gen)
    assert "compile" not in parts
    other = key_parts("defenses.anp.ANP", {"iterations": 4}, backdoored[0], compiled, gen)
    assert other["compile"] == "default" and entry_key(other) != entry_key(parts)


def test_rnp_reuses_its_masks_with_its_record(backdoored, embedded, tmp_path) -> None:
    model, store = backdoored[0], LearnedCache(tmp_path, {})
    rnp = dict(unlearn_epochs=2, recover_epochs=2, clean_threshold=0.5)
    first = run(RNP(**rnp, prune_threshold=0.2), model, embedded, store)
    second = run(RNP(**rnp, selection="count", prune_count=5), model, embedded, store)
    assert second.info["learned_masks"]["reused"] is True
    assert second.info["unlearn"] == first.info["unlearn"] and second.info["recover"] == first.info["recover"]
    assert second.info["pruned"] == 5
    third = run(RNP(**{**rnp, "unlearn_lr": 0.001}), model, embedded, store)
    assert third.info["learned_masks"]["reused"] is False


def damage_tensors(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def foreign_shapes(path: Path) -> None:
    """A whole entry (its sidecar's sha256 rewritten) whose tensors are not the model's mask layers."""
    data = encode_safetensors({"learned": {"layer.bn": torch.ones(3)}})
    path.write_bytes(data)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "sha256": hashlib.sha256(data).hexdigest()}))


def drop_sidecar(path: Path) -> None:
    path.with_suffix(".json").unlink()


@pytest.mark.parametrize("damage", [damage_tensors, foreign_shapes, drop_sidecar])
def test_a_damaged_or_foreign_entry_is_moved_aside_and_learned_again(
    damage, backdoored, embedded, tmp_path, caplog
) -> None:
    model, store = backdoored[0], LearnedCache(tmp_path, {})
    first = run(ANP(iterations=3), model, embedded, store)
    (entry,) = entries(tmp_path)
    damage(entry)
    with caplog.at_level(logging.WARNING):
        again = run(ANP(iterations=3), model, embedded, store)
    assert again.info["learned_masks"]["reused"] is False
    assert "moved it to" in caplog.text and entry.name in caplog.text
    assert list(tmp_path.glob("*.corrupt-*"))
    assert same_weights(state(again), state(first))
    assert run(ANP(iterations=3), model, embedded, store).info["learned_masks"]["reused"] is True  # rebuilt whole
