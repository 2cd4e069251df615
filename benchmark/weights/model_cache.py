"""Backdoored models cached by a key of everything that determines them, shared by every defense cell.

The caller takes a locked entry and asks whether it is there; on a miss it trains and stores:

    with model_cache.entry(path, model) as e:
        if not e.hit:
            e.store(meta, trigger)          # after training `e.model`
    e.model, e.source, e.meta, e.trigger, e.sha256

Concurrent jobs wanting the same model take a file lock: one trains, the others wait and load.
Writes are atomic, so a killed job never leaves a torn checkpoint. An entry is `<name>.pt` plus its
sidecar `<name>.json` (`{"key", "sha256", "meta"}`), written after the .pt: a .pt without a sidecar that
names its key and sha256 is not a whole entry. A damaged entry (wrong hash, unreadable, not our state
dict) is moved aside as `<name>.corrupt-<time>.pt` and the model is rebuilt; a file carrying pickled
code is refused, never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from benchmark.core.io import atomic_torch_save, atomic_write_json
from benchmark.sources.fetch import sha256_file
from benchmark.weights.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    load_strict,
    read_checkpoint,
    state_dict_of,
)

log = logging.getLogger(__name__)

# Bump when poisoning, training or architecture code changes what a given config produces.
MODEL_CODE_VERSION = 1


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of the JSON of `parts` (plus the code version)."""
    blob = json.dumps({"code": MODEL_CODE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


@dataclass
class CacheEntry:
    """One locked cache entry: on a hit, `model` holds the stored weights; on a miss, the caller stores them."""

    path: Path
    model: nn.Module
    hit: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    trigger: dict[str, torch.Tensor] = field(default_factory=dict)
    sha256: str = ""

    @property
    def source(self) -> str:
        """Where the model came from, as result.json records it: "cache" or "trained"."""
        return "cache" if self.hit else "trained"

    def store(self, meta: dict[str, Any], trigger: Mapping[str, torch.Tensor]) -> None:
        """Write `model`'s weights, `meta` and the attack's learned `trigger` tensors as this entry, atomically."""
        if self.hit:
            raise RuntimeError(f"model cache: {self.path} is already cached; a hit is never stored again")
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        trigger = {k: v.detach().cpu() for k, v in trigger.items()}
        atomic_torch_save({"state_dict": state, "meta": meta, "trigger": trigger}, self.path)
        self.sha256 = sha256_file(self.path)
        atomic_write_json(sidecar_path(self.path), {"key": self.path.stem, "sha256": self.sha256, "meta": meta})
        self.meta, self.trigger = dict(meta), trigger


@contextlib.contextmanager
def entry(path: Path, model: nn.Module) -> Iterator[CacheEntry]:
    """The entry at `path`, held under its file lock until the block ends: a hit (loaded into `model`) or a miss.

    A damaged entry is moved aside and handed out as a miss; a file carrying pickled code is refused.
    A miss the block leaves unstored (training failed) writes nothing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        e = CacheEntry(path, model)
        if path.exists() and _load(e):
            log.info("model: loaded from cache %s", path)
        else:
            log.info("model: not cached, training it (cache key %s)", path.stem)
        yield e


def _load(e: CacheEntry) -> bool:
    """Fill `e` from its file once it proves whole (True); move a damaged entry aside (False)."""
    try:
        e.meta, e.trigger, e.sha256 = _verified(e.path, e.model)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(
            f"{exc} It was left in place as evidence; move or delete it to rebuild the model."
        ) from None
    except CheckpointError as exc:
        moved = _move_aside(e.path)
        why = str(exc).splitlines()[0].replace(f"cached model {e.path}", "it").replace(str(e.path), "it")
        log.warning("model cache: %s is damaged (%s); moved it to %s, rebuilding", e.path, why, moved.name)
        return False
    e.hit = True
    return True


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        side = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    return side if isinstance(side, dict) else None


def _load_entry(path: Path, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load the checked file into `model` strictly; its meta and trigger. CheckpointError when it is not ours."""
    blob = read_checkpoint(path)
    load_strict(model, state_dict_of(blob, "state_dict"), f"cached model {path}")
    meta, trigger = blob.get("meta", {}), blob.get("trigger", {})
    if not isinstance(meta, Mapping) or not isinstance(trigger, Mapping):
        raise CheckpointError(f"cached model {path}: `meta` and `trigger` must be dicts")
    if not all(isinstance(v, torch.Tensor) for v in trigger.values()):
        raise CheckpointError(f"cached model {path}: `trigger` holds something other than tensors")
    return dict(meta), dict(trigger)


def _verified(path: Path, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """The entry at `path` (meta, trigger, sha256) once it proves whole; CheckpointError saying why not.

    A sidecar from before sidecars carried a sha256 (the bare meta) is trusted only if the file loads
    strictly; its sha256 is then written into a new sidecar, so the entry is verified from then on.
    """
    side = _read_sidecar(path)
    if side is None:
        raise CheckpointError(f"no readable sidecar {sidecar_path(path).name} (the write was cut short?)")
    if "sha256" not in side:  # an entry cached before this check existed
        meta, trigger = _load_entry(path, model)
        digest = sha256_file(path)
        atomic_write_json(sidecar_path(path), {"key": path.stem, "sha256": digest, "meta": meta})
        log.info("model cache: %s predates sha256 sidecars; it loads strictly, its sha256 is now recorded", path)
        return meta, trigger, digest
    if side.get("key") != path.stem:
        raise CheckpointError(f"its sidecar was made for key {side.get('key')!r}, not {path.stem!r}")
    digest = sha256_file(path)
    if digest != side["sha256"]:
        raise CheckpointError(f"its sha256 is {digest}, its sidecar says {side['sha256']}")
    return (*_load_entry(path, model), digest)


def _move_aside(path: Path) -> Path:
    """Move a damaged entry (and its sidecar) to `<name>.corrupt-<time>.pt`, kept for inspection."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}.corrupt-{stamp}.pt")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.stem}.corrupt-{stamp}-{n}.pt")
    os.replace(path, target)
    if sidecar_path(path).exists():
        os.replace(sidecar_path(path), sidecar_path(target))
    return target
