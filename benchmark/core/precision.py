"""Mixed precision: which autocast every training, defense and evaluation loop uses.

A backend setting like cudnn's flags, chosen once per process by the entry point (`benchmark.run.cli.setup_runtime`):
- `auto` (default): bf16 autocast on CUDA, plain fp32 on the CPU (where bf16 is slower on most machines);
- `fp32`: no autocast anywhere;
- `bf16`: bf16 autocast on the CPU too. It pays off only on CPUs with bf16 matrix units (Intel AMX): on a
  2-core Xeon with AMX, ResNet-18 (width 16, 32x32) evaluated 3.0x and trained 1.9x faster than
  fp32 channels_last. Elsewhere it is emulated and slower, so asking for it there logs a warning.
Results record the precision a cell ran in (`runtime` in result.json).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from pathlib import Path

import torch

from benchmark.core.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
_choice = "auto"


def set_precision(name: str) -> None:
    """Set the process-wide precision; an unknown name raises, naming the choices."""
    global _choice
    if name not in PRECISIONS:
        raise ConfigError(f"precision={name!r} is invalid: choose from {', '.join(PRECISIONS)}")
    _choice = name


def get_precision() -> str:
    return _choice


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast uses on `device` under the current setting (None: fp32, no autocast)."""
    if _choice == "bf16" or (_choice == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def resolved(device: torch.device) -> str:
    """What the setting means on `device`: 'bf16' or 'fp32' (for the record)."""
    return "fp32" if autocast_dtype(device) is None else "bf16"


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for a forward pass (and its loss) on `device`, or nothing in fp32."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what `platform` knows): results record it, since
    float results and timings move between CPU models."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@functools.cache
def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (Intel AMX), read from /proc/cpuinfo (Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return "amx_bf16" in line.split()
    return False


def warn_if_slow(device: torch.device) -> None:
    """bf16 on a CPU without bf16 units is emulated: say so once, at start."""
    if _choice == "bf16" and device.type == "cpu" and not cpu_has_bf16_units():
        log.warning("precision=bf16 on a CPU without AMX bf16 units: emulated, likely slower than fp32 here")
