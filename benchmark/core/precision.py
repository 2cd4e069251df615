"""Mixed precision: which autocast every training, defense and evaluation loop uses.

Chosen once by the entry point from the config (`precision`) and passed to each loop as a `Precision`:
- `auto` (default): bf16 autocast on CUDA, plain fp32 on the CPU (where bf16 is slower on most machines);
- `fp32`: no autocast anywhere;
- `bf16`: bf16 autocast on the CPU too. It pays off only on CPUs that multiply bf16 natively: Intel AMX, or
  AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake); speed-ups in docs/performance.md. Elsewhere it is
  emulated and slower, so asking for it there logs a warning.
Results record the precision a cell ran in (`runtime` in result.json).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from benchmark.core.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    """The precision a run asked for, handed to every loop that computes (no process-wide state).

    Built once from the config by the entry point and passed down: to training, evaluation and, through
    `DefenseData`, to each defense; what it means depends on the device a loop runs on.
    """

    name: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise ConfigError(f"precision={self.name!r} is invalid: choose from {', '.join(PRECISIONS)}")

    def dtype(self, device: torch.device) -> torch.dtype | None:
        """The dtype autocast uses on `device` (None: fp32, no autocast)."""
        if self.name == "bf16" or (self.name == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return None

    def resolved(self, device: torch.device) -> str:
        """What the setting means on `device`: 'bf16' or 'fp32' (for the record and the cache key)."""
        return "fp32" if self.dtype(device) is None else "bf16"

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast for a forward pass (and its loss) on `device`, or nothing in fp32."""
        dtype = self.dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)


AUTO = Precision()  # the default of every loop: bf16 on CUDA, fp32 on the CPU


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo (Linux); None where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip() if ":" in line else ""
    return None


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what `platform` knows): results record it, since
    float results and timings move between CPU models."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""/proc/cpuinfo flags of native bf16 dot products (oneDNN uses either; both train faster than fp32)."""


def has_bf16_flag(flags_line: str) -> bool:
    """Whether a /proc/cpuinfo `flags` line names a native bf16 unit."""
    return not BF16_FLAGS.isdisjoint(flags_line.split())


@functools.cache
def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX-512 BF16), read from /proc/cpuinfo (Linux)."""
    return has_bf16_flag(_cpuinfo("flags") or "")


def warn_if_slow(precision: Precision, device: torch.device) -> None:
    """bf16 on a CPU without bf16 units is emulated: say so once, at start."""
    if precision.name == "bf16" and device.type == "cpu" and not cpu_has_bf16_units():
        log.warning(
            "precision=bf16 on a CPU without native bf16 units (AMX or AVX-512 BF16): emulated, likely slower than fp32"
        )
