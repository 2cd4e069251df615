"""torch.compile for the hot loops, chosen once by the entry point (`compile`) and passed down like `Precision`.

- `eager` (default): no compiling. RNP and ANP then compute bit for bit what their authors' loops compute
  (tests/methods/test_fidelity.py); compiled kernels fuse and reorder float operations, so results move in the
  last digits, which is why compiling is asked for, not assumed.
- `default`: inductor's fused kernels (CPU and CUDA).
- `reduce-overhead`: the same, replayed as CUDA graphs on a GPU, for loops of small batches that are bound by
  kernel launches (ANP's 2,000 iterations at batch 128, RNP's epochs of 4 batches); on the CPU it is `default`.
- `max-autotune`: also searches kernel configurations (long first compile; CUDA graphs too).
Compiling costs seconds to minutes the first time a shape is met, so it pays only on long runs.
Results record the mode (`runtime.compile` in result.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from benchmark.core.errors import ConfigError

COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs (on CUDA only)


@dataclass(frozen=True)
class Compilation:
    """How a loop runs its model's forward (and backward): eager, or through torch.compile in `mode`."""

    mode: Literal["eager", "default", "reduce-overhead", "max-autotune"] = "eager"

    def __post_init__(self) -> None:
        if self.mode not in COMPILE_MODES:
            raise ConfigError(f"compile={self.mode!r} is invalid: choose from {', '.join(COMPILE_MODES)}")

    @property
    def enabled(self) -> bool:
        return self.mode != "eager"

    def resolved(self, device: torch.device) -> str:
        """What the mode means on `device`, for the record and cache keys (CUDA graphs exist only on CUDA)."""
        if self.mode in CUDA_GRAPH_MODES and device.type != "cuda":
            return "default"
        return self.mode

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`model` itself when eager, else a compiled module sharing its parameters and buffers (train it through
        this, keep reading masks and weights from `model`)."""
        mode = self.resolved(device)
        return model if mode == "eager" else torch.compile(model, mode=mode)

    def record(self, device: torch.device) -> dict[str, str]:
        """`{"compile": mode}` for records and cache keys, empty when eager: what was written before the setting
        existed (eager) stays as it was."""
        mode = self.resolved(device)
        return {} if mode == "eager" else {"compile": mode}

    def step(self, device: torch.device) -> None:
        """Call at the start of each step of a loop: with CUDA graphs, the outputs of the last step's replay may
        be overwritten from here on (torch's advice for training loops under reduce-overhead); else nothing."""
        if self.resolved(device) in CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()


EAGER = Compilation()  # the default of every loop
