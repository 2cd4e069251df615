"""Entry point: `python -m benchmark [overrides]` runs one cell; `-m` sweeps a grid (Hydra)."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from benchmark.errors import BenchmarkError, ConfigError
from benchmark.precision import set_precision, warn_if_slow

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("benchmark")


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


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:  # resume, failed.json instead of an abort, one GPU per job
        from benchmark.sweep import run_sweep_cell

        run_sweep_cell(cfg, run_dir, hc.job.num, Path(hc.sweep.dir))
        return
    from benchmark.cell import run_cell  # imported late so `--help` and bad overrides answer fast

    try:
        run_cell(cfg, run_dir, runtime_from_config(cfg))
    except BenchmarkError as exc:
        log.error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
