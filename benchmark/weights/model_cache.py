"""Backdoored models cached by a key of everything that determines them, shared by every defense cell.

Concurrent jobs wanting the same model take a file lock: one trains, the others wait and load.
Writes are atomic, so a killed job never leaves a torn checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from benchmark.core.io import atomic_torch_save, atomic_write_json

log = logging.getLogger(__name__)

# What a training function hands back: metadata (JSON) and the attack's learned trigger tensors.
TrainOutcome = tuple[dict[str, Any], dict[str, torch.Tensor]]

# Bump when poisoning, training or architecture code changes what a given config produces.
MODEL_CODE_VERSION = 1


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of the JSON of `parts` (plus the code version)."""
    blob = json.dumps({"code": MODEL_CODE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_train(
    path: Path,
    model: nn.Module,
    train: Callable[[nn.Module], TrainOutcome],
    meta: dict[str, Any],
) -> tuple[nn.Module, str, dict[str, Any], dict[str, torch.Tensor]]:
    """Load `model`'s weights from `path` if cached, else train it and cache it.

    `train` returns the metadata to store and the attack's learned trigger tensors (saved next to the
    weights, so a cached model comes back with the trigger it was trained with). Returns the model, its
    source ("cache" or "trained"), the stored metadata and the trigger state.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
            log.info("model: loaded from cache %s", path)
            return model, "cache", blob.get("meta", {}), blob.get("trigger", {})
        log.info("model: not cached, training it (cache key %s)", path.stem)
        extra, trigger = train(model)
        meta = {**meta, **extra}
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        trigger = {k: v.detach().cpu() for k, v in trigger.items()}
        atomic_torch_save({"state_dict": state, "meta": meta, "trigger": trigger}, path)
        atomic_write_json(path.with_suffix(".json"), meta)
        return model, "trained", meta, trigger
