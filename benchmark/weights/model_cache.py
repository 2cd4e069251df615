"""Backdoored models cached by a key of everything that determines them, shared by every defense cell.

The caller takes a locked entry and asks whether it is there; on a miss it trains and stores:

    with model_cache.entry(path, model) as e:
        if not e.hit:
            e.store(meta, trigger)          # after training `e.model`
    e.model, e.source, e.meta, e.trigger, e.sha256

Concurrent jobs wanting the same model take a file lock: one trains, the others wait and load.
Writes are atomic, so a killed job never leaves a torn file. An entry is `<key>.safetensors` (the weights
as `state_dict.<name>` tensors and the attack's learned trigger as `trigger.<name>` tensors, see
benchmark.weights.checkpoint) plus its sidecar `<key>.json` (`{"key", "sha256", "meta"}`: the metadata is
JSON and lives only here), written after the weights: a weights file without a sidecar that names its key
and sha256 is not a whole entry. Neither file can carry code. A damaged entry (wrong hash, unreadable, not
our tensors) is moved aside as `<key>.corrupt-<time>.safetensors` and the model is rebuilt.

An older entry `<key>.pt` (a pickled `{"state_dict", "meta", "trigger"}` dict) is read once, strictly as
before (`torch.load(weights_only=True)`; a file carrying pickled code is refused and left in place), then
rewritten as `<key>.safetensors` with a new sidecar, and the `.pt` is deleted: its tensors now live in the
new file, and a file that could carry code is not worth keeping. A damaged `.pt` is moved aside as
`<key>.corrupt-<time>.pt`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from benchmark.core.io import atomic_write_bytes, atomic_write_json, write_probe
from benchmark.sources.fetch import sha256_file
from benchmark.weights.checkpoint import (
    SAFETENSORS_SUFFIX,
    CheckpointError,
    UnsafeCheckpointError,
    encode_safetensors,
    load_strict,
    parse_safetensors,
    read_checkpoint,
    state_dict_of,
)

log = logging.getLogger(__name__)

# Bump when poisoning, training or architecture code changes what a given config produces.
MODEL_CODE_VERSION = 1
LEGACY_SUFFIX = ".pt"  # entries written before the cache moved to safetensors
GROUPS = ("state_dict", "trigger")
SHOW_FOREIGN = 8  # foreign tensors (or groups) named in an error

Loaded = tuple[dict[str, Any], dict[str, torch.Tensor], str]  # an entry's meta, trigger and sha256
Verifier = Callable[[Path, nn.Module], Loaded]


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of the JSON of `parts` (plus the code version)."""
    blob = json.dumps({"code": MODEL_CODE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sidecar_path(path: Path) -> Path:
    """`<key>.json` beside `<key>.safetensors` (and beside an older `<key>.pt`: one key, one sidecar)."""
    return path.with_suffix(".json")


def legacy_path(path: Path) -> Path:
    """Where the entry `path` lived before the cache moved to safetensors: `<key>.pt`."""
    return path.with_suffix(LEGACY_SUFFIX)


def _write(path: Path, model: nn.Module, meta: dict[str, Any], trigger: Mapping[str, torch.Tensor]) -> str:
    """Write `model`'s weights and `trigger` to `path`, then the sidecar naming their sha256; that sha256."""
    data = encode_safetensors({"state_dict": model.state_dict(), "trigger": trigger})
    atomic_write_bytes(path, data)
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_json(sidecar_path(path), {"key": path.stem, "sha256": digest, "meta": meta})
    return digest


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
        trigger = {k: v.detach().cpu() for k, v in trigger.items()}
        self.sha256 = _write(self.path, self.model, meta, trigger)
        self.meta, self.trigger = dict(meta), trigger


@contextlib.contextmanager
def entry(path: Path, model: nn.Module, own: Path | None = None) -> Iterator[CacheEntry]:
    """The entry at `path` (`<key>.safetensors`), held under its file lock until the block ends: a hit
    (loaded into `model`) or a miss.

    An older `<key>.pt` is read instead when there is no `<key>.safetensors`, and rewritten as one. A damaged
    entry is moved aside and handed out as a miss; a `.pt` carrying pickled code is refused. A miss the block
    leaves unstored (training failed) writes nothing.

    A shared cache mounted read-only (`own` given, the folder refusing a new file): a verified entry is loaded
    from it without a lock (a lock is only needed to write); a missing or damaged one is taken from, or
    trained into, `own` (the user's writable cache) instead, and the shared folder is left untouched.
    """
    path = Path(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        raise ValueError(f"model cache: an entry is a {SAFETENSORS_SUFFIX} file, not {path.name}")
    if own is not None and own != path.parent and path.parent.is_dir() and write_probe(path.parent) is not None:
        e = CacheEntry(path, model)
        if path.exists() and _read_only_load(e):
            log.info("model: loaded from the read-only cache %s (verified; reading needs no lock)", path)
            yield e
            return
        log.info("model cache: %s is read-only; this entry is kept in your own cache %s", path.parent, own)
        path = Path(own) / path.name
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        e = CacheEntry(path, model)
        if (path.exists() or legacy_path(path).exists()) and _load(e):
            log.info("model: loaded from cache %s", path)
        else:
            log.info("model: not cached, training it (cache key %s)", path.stem)
        yield e


def _read_only_load(e: CacheEntry) -> bool:
    """Fill `e` from its entry in a read-only cache if it proves whole; else False (nothing moved, one warning)."""
    try:
        e.meta, e.trigger, e.sha256 = _verified(e.path, e.model)
    except UnsafeCheckpointError:
        raise
    except CheckpointError as exc:
        log.warning("model cache: %s in the read-only cache is not usable (%s)", e.path, str(exc).splitlines()[0])
        return False
    e.hit = True
    return True


def _load(e: CacheEntry) -> bool:
    """Fill `e` from its file once it proves whole (True); move a damaged entry aside (False).

    With only an older `.pt` there, that is read (once) and rewritten as `e.path`, and the `.pt` deleted.
    Both there means that rewrite was cut short: the new file wins when whole (the `.pt` is then deleted),
    else it is moved aside alone, leaving the `.pt` its sidecar, and the `.pt` is read again.
    """
    legacy = legacy_path(e.path)
    if e.path.exists():
        if _fill(e, e.path, _verified, with_sidecar=not legacy.exists()):
            legacy.unlink(missing_ok=True)
            return True
        if not legacy.exists():
            return False
    if not _fill(e, legacy, _verified_legacy):
        return False
    e.sha256 = _write(e.path, e.model, e.meta, e.trigger)
    legacy.unlink()
    log.info("model cache: %s loads strictly; rewritten as %s, the .pt deleted", legacy, e.path.name)
    return True


def _fill(e: CacheEntry, file: Path, verify: Verifier, with_sidecar: bool = True) -> bool:
    """Fill `e` from `file` checked by `verify` (True), or move `file` aside with one warning (False).

    A file carrying pickled code is refused (UnsafeCheckpointError) and left where it is.
    """
    try:
        e.meta, e.trigger, e.sha256 = verify(file, e.model)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(
            f"{exc} It was left in place as evidence; move or delete it to rebuild the model."
        ) from None
    except CheckpointError as exc:
        moved = move_aside(file, with_sidecar)
        why = str(exc).splitlines()[0].replace(f"cached model {file}", "it").replace(str(file), "it")
        log.warning("model cache: %s is damaged (%s); moved it to %s, rebuilding", file, why, moved.name)
        return False
    e.hit = True
    return True


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        side = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    return side if isinstance(side, dict) else None


def _verified(path: Path, model: nn.Module) -> Loaded:
    """The entry at `path` (meta, trigger, sha256), loaded into `model` once it proves whole; CheckpointError
    saying why not. The bytes hashed are the bytes loaded."""
    side = _read_sidecar(path)
    if side is None:
        raise CheckpointError(f"no readable sidecar {sidecar_path(path).name} (the write was cut short?)")
    if side.get("key") != path.stem:
        raise CheckpointError(f"its sidecar was made for key {side.get('key')!r}, not {path.stem!r}")
    if not isinstance(side.get("sha256"), str) or not isinstance(side.get("meta"), dict):
        raise CheckpointError(f"its sidecar {sidecar_path(path).name} lacks a sha256 or a meta dict")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"it cannot be read: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != side["sha256"]:
        raise CheckpointError(f"its sha256 is {digest}, its sidecar says {side['sha256']}")
    groups = parse_safetensors(data, f"cached model {path}")
    foreign = sorted(k for k, g in groups.items() if k not in GROUPS or not isinstance(g, Mapping))
    if foreign:
        listed = ", ".join(foreign[:SHOW_FOREIGN]) + (" ..." if len(foreign) > SHOW_FOREIGN else "")
        raise CheckpointError(f"cached model {path} holds tensors outside the state_dict and trigger groups: {listed}")
    load_strict(model, groups.get("state_dict", {}), f"cached model {path}")
    return dict(side["meta"]), dict(groups.get("trigger", {})), digest


def _load_legacy(path: Path, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load the checked `.pt` into `model` strictly; its meta and trigger. CheckpointError when it is not ours."""
    blob = read_checkpoint(path)
    load_strict(model, state_dict_of(blob, "state_dict"), f"cached model {path}")
    meta, trigger = blob.get("meta", {}), blob.get("trigger", {})
    if not isinstance(meta, Mapping) or not isinstance(trigger, Mapping):
        raise CheckpointError(f"cached model {path}: `meta` and `trigger` must be dicts")
    if not all(isinstance(v, torch.Tensor) for v in trigger.values()):
        raise CheckpointError(f"cached model {path}: `trigger` holds something other than tensors")
    try:
        json.dumps(meta)
    except (TypeError, ValueError):
        raise CheckpointError(f"cached model {path}: `meta` is not plain JSON data") from None
    return dict(meta), dict(trigger)


def _verified_legacy(path: Path, model: nn.Module) -> Loaded:
    """The older `.pt` entry at `path` (meta, trigger, sha256) once it proves whole; CheckpointError why not.

    A sidecar from before sidecars carried a sha256 (the bare meta) is trusted only if the file loads strictly.
    """
    side = _read_sidecar(path)
    if side is None:
        raise CheckpointError(f"no readable sidecar {sidecar_path(path).name} (the write was cut short?)")
    digest = sha256_file(path)
    if "sha256" in side:  # else an entry cached before this check existed
        if side.get("key") != path.stem:
            raise CheckpointError(f"its sidecar was made for key {side.get('key')!r}, not {path.stem!r}")
        if digest != side["sha256"]:
            raise CheckpointError(f"its sha256 is {digest}, its sidecar says {side['sha256']}")
    return (*_load_legacy(path, model), digest)


def move_aside(path: Path, with_sidecar: bool = True) -> Path:
    """Move a damaged entry (and its sidecar) to `<key>.corrupt-<time><suffix>`, kept for inspection."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}.corrupt-{stamp}{path.suffix}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.stem}.corrupt-{stamp}-{n}{path.suffix}")
    os.replace(path, target)
    if with_sidecar and sidecar_path(path).exists():
        os.replace(sidecar_path(path), sidecar_path(target))
    return target
