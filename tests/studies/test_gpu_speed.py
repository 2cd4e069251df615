"""studies/gpu_speed.sh, the one command that measures the speed figures on a lent GPU, dry-run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "studies" / "gpu_speed.sh"


def run_script(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    python = Path(sys.executable).parent  # the script calls python3: this environment's
    environ = {**os.environ, "OUT": str(tmp_path), "DEVICE": "cpu", "SIZE": "tiny", **env}
    environ["PATH"] = f"{python}{os.pathsep}{environ['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=environ, capture_output=True, text=True)


def test_an_unknown_part_is_refused_with_the_usage(tmp_path: Path) -> None:
    done = run_script(tmp_path, "fast")
    assert done.returncode == 2 and "usage:" in done.stderr and "eager|compiled|both" in done.stderr


@pytest.mark.slow  # the tiny perf workload, eager (~1.5 min on 2 cores)
def test_the_eager_part_writes_its_figures_and_the_machine(tmp_path: Path) -> None:
    done = run_script(tmp_path, "eager")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "perf_eager.json").read_text())
    assert result["complete"] is True and result["options"]["compile"] == "eager"
    assert "torch" in (tmp_path / "gpu.txt").read_text() and "perf eager: exit 0" in done.stdout
    assert not (tmp_path / "perf_compiled.json").exists()
