"""The command line as a user runs it: a subprocess in its own home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(args: list[str], home: Path, timeout: int = 300, **env: str | None) -> subprocess.CompletedProcess:
    """Run the CLI in `home` (HOME and BENCHMARK_HOME point there); an env value of None unsets it."""
    environ = {**os.environ, "HOME": str(home), "BENCHMARK_HOME": str(home / "bench"), "WANDB_MODE": "disabled"}
    environ.pop("WANDB_API_KEY", None)
    for key, value in env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args],
        cwd=home, env=environ, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
