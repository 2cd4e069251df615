"""Process set-up done once, in the entry point: seeding, device choice, precision, threads, backend flags.

`CONF_DIR` (where the configs live) is re-exported for the CLI, the sweep's grid check and export.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from omegaconf import DictConfig

from benchmark import CONF_DIR
from benchmark.core.errors import ConfigError
from benchmark.core.precision import set_precision, warn_if_slow

__all__ = ["CONF_DIR", "runtime_from_config", "select_device", "setup_runtime"]


def select_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; an explicit CUDA request on a machine without one fails clearly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is invalid: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    return device


def setup_runtime(seed: int, device_name: str, threads: int | None = None, precision: str = "auto") -> torch.device:
    """Seeding, device choice, precision and backend flags: done once, here, for the whole process."""
    set_precision(precision)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    device = select_device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    warn_if_slow(device)
    return device


def runtime_from_config(cfg: DictConfig, device_name: str | None = None) -> torch.device:
    """`setup_runtime` with the config's seed, device (unless a sweep job claimed one), threads and precision."""
    seed = cfg.seed if isinstance(cfg.seed, int) else 0  # a bad seed is reported, naming it, by build_parts
    return setup_runtime(seed, device_name or cfg.device, cfg.get("threads"), cfg.get("precision", "auto"))
