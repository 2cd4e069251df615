"""Process set-up done once, in the entry point: seeding, device choice, precision, threads, backend flags.

`CONF_DIR` (where the configs live) is re-exported for the CLI, the sweep's grid check and export.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from benchmark import CONF_DIR
from benchmark.core.compilation import EAGER, Compilation
from benchmark.core.errors import ConfigError
from benchmark.core.precision import Precision, cpu_name, warn_if_slow

if TYPE_CHECKING:
    from benchmark.run.config import RunConfig

__all__ = [
    "CONF_DIR",
    "runtime_info",
    "select_device",
    "setup_runtime",
    "start_runtime",
]


def select_device(name: str) -> torch.device:
    """The run's device, resolved once here: on CUDA always indexed (`cuda:K`).

    `auto` picks CUDA when present. `auto` and bare `cuda` mean the current CUDA device (cuda:0 unless a
    sweep job claimed another), since `torch.cuda.set_device` refuses an unindexed device; `cuda:N` is
    checked against the visible GPUs, so a wrong N fails here in one line, not mid-run in CUDA.
    """
    wanted = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    try:
        device = torch.device(wanted)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is invalid: use auto, cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    index = torch.cuda.current_device() if device.index is None else device.index
    _check_gpu_index(name, index)
    return torch.device("cuda", index)


def _check_gpu_index(name: str, index: int) -> None:
    """A `cuda:N` beyond the visible GPUs: say which indexes exist (CUDA_VISIBLE_DEVICES renumbers from 0)."""
    count = torch.cuda.device_count()
    if index < count:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible} renumbers them from 0)" if visible is not None else ""
    indexes = "cuda:0" if count == 1 else f"cuda:0..cuda:{count - 1}"
    raise ConfigError(
        f"device={name!r} is out of range: {count} GPU{'s' if count != 1 else ''} visible here{where}, "
        f"so N must be in [0, {count - 1}]; use {indexes}, cuda or auto"
    )


_CHOSEN_THREADS: dict[str, Any] = {}  # how `threads: auto` chose, for result.json's runtime (set once per process)


def usable_cpus() -> set[int]:
    """The cores this process may run on (its affinity mask: a container's or a SLURM job's share)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """How many cores this process may run on."""
    return len(usable_cpus())


def _cpu_jiffies(stat: Path) -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) time since boot from /proc/stat; steal counts as busy (another guest has the core)."""
    out = {}
    for line in stat.read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            user_to_steal = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            idle = user_to_steal[3] + user_to_steal[4]
            out[int(name[3:])] = (sum(user_to_steal) - idle, sum(user_to_steal))
    return out


def busy_cores(seconds: float = 0.25, stat: Path = Path("/proc/stat")) -> float | None:
    """How many of this process's cores other work keeps busy now, sampled over `seconds` (None: no /proc/stat).

    Unlike the 1-minute load average, it does not count work that just ended (a `pip install` before the run)."""
    cpus = usable_cpus()
    try:
        first = _cpu_jiffies(stat)
        time.sleep(seconds)
        second = _cpu_jiffies(stat)
    except (OSError, ValueError, IndexError):
        return None
    busy = 0.0
    for cpu in cpus & first.keys() & second.keys():
        total = second[cpu][1] - first[cpu][1]
        busy += (second[cpu][0] - first[cpu][0]) / total if total > 0 else 0.0
    return busy


def auto_threads(cores: int, busy: float) -> int:
    """Threads for the cores that are actually free: on busy cores, two threads are slower than one.

    `busy` is how many cores other work occupies (sampled now, else the 1-minute load average); at least one.
    """
    return max(1, min(cores, int(cores - busy + 0.5)))


def resolve_threads(threads: int | str | None) -> int | None:
    """`threads`: None keeps torch's default, N sets N, auto picks from the free cores and records why."""
    _CHOSEN_THREADS.clear()
    if threads != "auto":
        return threads if isinstance(threads, int) else None
    cores, load = usable_cores(), os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = busy_cores()
    chosen = auto_threads(cores, load if busy is None else busy)
    auto = {"cores": cores, "busy_cores": None if busy is None else round(busy, 2), "load_1min": round(load, 2)}
    _CHOSEN_THREADS.update({"threads_auto": {**auto, "chosen": chosen}})
    return chosen


def setup_runtime(
    seed: int, device_name: str, threads: int | str | None = None, precision: str | Precision = "auto"
) -> torch.device:
    """Seeding, device choice and backend flags, done once for the whole process; checks and warns on `precision`.

    On CUDA the chosen GPU becomes the current one, so that anything allocating on "the current device"
    (cuBLAS/cuDNN handles, compiled kernels, a bare `cuda` anywhere) lands on the run's GPU, not on GPU 0.
    The precision itself is no process state: callers pass a `Precision` to every loop.
    """
    chosen = precision if isinstance(precision, Precision) else Precision(precision)  # a bad name fails here
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    chosen_threads = resolve_threads(threads)
    if chosen_threads:
        torch.set_num_threads(chosen_threads)
    device = select_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # indexed: select_device never returns a bare `cuda`
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    warn_if_slow(chosen, device)
    return device


def start_runtime(rc: RunConfig, device_name: str | None = None) -> torch.device:
    """`setup_runtime` with the run config's seed, device (unless a sweep job claimed one), threads, precision."""
    return setup_runtime(rc.seed, device_name or rc.device, rc.threads, rc.precision)


def runtime_info(device: torch.device, precision: Precision, compilation: Compilation = EAGER) -> dict[str, Any]:
    """How the numbers were computed: device, CPU model, precision, compiling (named only when on, so that records
    and cache keys from before the setting stay as they were) and threads (they move the last digits)."""
    return {
        "device": str(device),
        "cpu": cpu_name(),
        "precision": precision.resolved(device),
        **compilation.record(device),
        "torch_threads": torch.get_num_threads(),
        **_CHOSEN_THREADS,
    }
