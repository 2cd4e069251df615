"""What a cell leaves behind: result.json (schema 1, see DESIGN.md), the curve CSV, versions."""

from __future__ import annotations

import csv
import io
import math
import subprocess
from pathlib import Path
from typing import Any

import torch

import benchmark
from benchmark.io import atomic_write_json, atomic_write_text

SCHEMA = 1


def versions() -> dict[str, str | None]:
    return {"benchmark": benchmark.__version__, "torch": torch.__version__, "git": git_revision()}


def git_revision() -> str | None:
    """The commit of the benchmark's own checkout (with '+dirty' for local changes), if it is one."""
    root = Path(benchmark.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def clean_floats(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v) for v in obj]
    return obj


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    path = Path(run_dir) / "result.json"
    atomic_write_json(path, clean_floats(result))
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
