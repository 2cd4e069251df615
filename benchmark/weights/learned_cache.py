"""What a defense learned (RNP's and ANP's per-channel masks), cached by everything that determines it.

A stability sweep over ANP's pruning threshold, or a rerun with another selection rule or curve, would else
relearn the same masks for every cell: 2,000 ANP iterations to change one number applied afterwards. The key
hashes the defense's class and learning knobs (`MaskPruningDefense.learning_knobs`: all but the post-hoc ones)
and the exact inputs it was handed: the model's weights (`weights_digest`), the defense images and labels,
their augmentation, the class count, the random generator's state, the precision, the compile mode (when
on), the device type and torch's version. The same key therefore means the same computation; on the machine
that stored the entry it gives bit-identical masks (tests/weights/test_learned_cache.py), elsewhere masks as a
rerun there would.

An entry is `<kind>-<key>.safetensors` (group `learned`) with its sidecar `<kind>-<key>.json`: `key`,
`sha256` of the tensor file, `parts` (what was hashed, for a reader), `info` (the learning's own record),
`seconds` (what learning took) and `runtime` (where). Entries are written atomically under a file lock, so
parallel sweeps wanting the same masks learn them once; an entry that is damaged, foreign or of other shapes
than the model's mask layers is moved aside as `<name>.corrupt-<time>` and learned again.

A reused entry is said in the cell's record: `defense_info.learned_masks` = {reused, entry, learned_seconds,
learned_on}, and `timing_s.defense_reused` carries the learning seconds this cell did not spend (the report
counts them in the defense's cost).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import Tensor, nn

from benchmark.core.io import atomic_write_bytes, atomic_write_json
from benchmark.weights.checkpoint import CheckpointError, encode_safetensors, parse_safetensors, weights_digest
from benchmark.weights.model_cache import move_aside, sidecar_path
from defenses.base import DefenseData, Learned

log = logging.getLogger(__name__)

# Bump when a defense's learning code changes what a given key produces.
LEARNED_CODE_VERSION = 1
GROUP = "learned"


def tensor_digest(*tensors: Tensor) -> str:
    """sha256 of each tensor's dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def key_parts(kind: str, knobs: dict[str, Any], model: nn.Module, data: DefenseData, gen: torch.Generator) -> dict:
    """Everything that determines what `kind` learns from these inputs (see the module docstring)."""
    device = data.device
    return {
        "code": LEARNED_CODE_VERSION,
        "defense": kind,
        "knobs": knobs,
        "weights": weights_digest(model),
        "data": tensor_digest(data.images.x, data.images.y),
        "augment": asdict(data.augment),
        "num_classes": data.num_classes,
        "generator": tensor_digest(gen.get_state()),
        "precision": data.precision.resolved(device),
        **data.compilation.record(device),  # compiled kernels reorder float sums; eager keys stay as they were
        "device": device.type,
        "torch": torch.__version__,
    }


def entry_key(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class LearnedCache:
    """A folder of learned-mask entries (`paths.cache`/learned); `runtime` is recorded with each new entry."""

    root: Path
    runtime: dict[str, Any]

    def recall(
        self,
        kind: str,
        knobs: dict[str, Any],
        model: nn.Module,
        data: DefenseData,
        gen: torch.Generator,
        learn: Callable[[], Learned],
        shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> Learned:
        """The stored tensors and record for these inputs, else `learn()`'s, stored (see the module docstring).

        `shapes`: the names and shapes the tensors must have (the model's mask layers); an entry that
        differs is damaged or foreign, and is learned again.
        """
        parts = key_parts(kind, knobs, model, data, gen)
        key = entry_key(parts)
        path = Path(self.root) / f"{kind.rsplit('.', 1)[-1].lower()}-{key}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            stored = _load(path, key, shapes) if path.exists() else None
            if stored is not None:
                tensors, side = stored
                log.info("learned masks: reused %s (learned in %.1f s)", path.name, side["seconds"])
                record = {"reused": True, "entry": path.name, "learned_seconds": side["seconds"]}
                return tensors, {**side["info"], "learned_masks": {**record, "learned_on": side["runtime"]}}
            start = time.perf_counter()
            tensors, info = learn()
            seconds = round(time.perf_counter() - start, 3)
            stored_ok = _store(path, key, parts, tensors, info, seconds, self.runtime)
        record = {"reused": False, "entry": path.name if stored_ok else None, "learned_seconds": seconds}
        return tensors, {**info, "learned_masks": record}


def _store(
    path: Path,
    key: str,
    parts: dict[str, Any],
    tensors: dict[str, Tensor],
    info: dict[str, Any],
    seconds: float,
    runtime: dict[str, Any],
) -> bool:
    """Write the entry (tensors first, then the sidecar naming their sha256); False when `info` is not JSON."""
    try:
        side_info = json.loads(json.dumps(info, allow_nan=False))
    except (TypeError, ValueError) as exc:
        log.warning("learned masks: not cached, their record is not plain JSON (%s)", exc)
        return False
    data = encode_safetensors({GROUP: tensors})
    atomic_write_bytes(path, data)
    side = {
        "key": key,
        "sha256": hashlib.sha256(data).hexdigest(),
        "parts": json.loads(json.dumps(parts, default=str)),
        "info": side_info,
        "seconds": seconds,
        "runtime": runtime,
    }
    atomic_write_json(sidecar_path(path), side)
    log.info("learned masks: stored %s", path.name)
    return True


def _load(path: Path, key: str, shapes: dict[str, tuple[int, ...]] | None) -> tuple[dict[str, Tensor], dict] | None:
    """The entry's tensors and sidecar once they prove whole; else move it aside (one warning) and None."""
    try:
        return _verified(path, key, shapes)
    except CheckpointError as exc:
        moved = move_aside(path)
        log.warning("learned masks: %s is damaged (%s); moved it to %s, learning again", path.name, exc, moved.name)
        return None


def _verified(path: Path, key: str, shapes: dict[str, tuple[int, ...]] | None) -> tuple[dict[str, Tensor], dict]:
    try:
        side = json.loads(sidecar_path(path).read_text())
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"entry or sidecar unreadable: {str(exc)[:200]}") from None
    if not isinstance(side, dict) or side.get("key") != key:
        raise CheckpointError(f"its sidecar was not made for key {key}")
    if hashlib.sha256(data).hexdigest() != side.get("sha256"):
        raise CheckpointError("its sha256 differs from its sidecar's")
    seconds = side.get("seconds")
    if not isinstance(side.get("info"), dict) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise CheckpointError("its sidecar lacks the learning's record or seconds")
    groups = parse_safetensors(data, f"learned masks {path.name}")
    if set(groups) != {GROUP}:
        raise CheckpointError(f"it holds groups {sorted(groups)}, not only {GROUP!r}")
    tensors = dict(groups[GROUP])
    for name, t in tensors.items():
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"tensor {name!r} is not finite floating point")
    if shapes is not None and {n: tuple(t.shape) for n, t in tensors.items()} != shapes:
        raise CheckpointError("its tensors are not the model's mask layers (names or shapes differ)")
    return tensors, {**side, "runtime": side.get("runtime") if isinstance(side.get("runtime"), dict) else {}}
