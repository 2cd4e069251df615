"""The torch/torchvision pair, checked at start-up: a mismatched pair otherwise fails deep inside Hydra.

A torchvision built for another torch fails on import (its compiled operators do not register), which
Hydra reports as "Error locating target 'benchmark.run.grid.GridCheck'" — nothing that names the cause.
"""

from __future__ import annotations

import importlib
import re

from benchmark.core.errors import BenchmarkError

# torchvision 0.N is built for torch 2.(N - 15): 0.17 <-> 2.2, ..., 0.29 <-> 2.14 (pytorch/vision's table).
TORCHVISION_MINOR_OFFSET = 15
FIX = (
    'install a matching pair into this environment, e.g. python -m pip install "torch==2.14.1" "torchvision==0.29.1" '
    "(both from the same index: PyPI, or the same https://download.pytorch.org/whl/<cpu|cuXXX> index)"
)


class TorchBuildError(BenchmarkError):
    """torch and torchvision in this environment are not built for each other."""


def _minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None


def pair_problem(torch_version: str, torchvision_version: str) -> str | None:
    """Why this torch/torchvision version pair does not go together, or None when it does."""
    tv, th = _minor(torchvision_version), _minor(torch_version)
    if tv is None or th is None or th[0] != 2:
        return None  # a version scheme this table does not cover: the import check still applies
    wanted = f"0.{th[1] + TORCHVISION_MINOR_OFFSET}"
    if tv != (0, th[1] + TORCHVISION_MINOR_OFFSET):
        return f"torchvision {torchvision_version} is not built for torch {torch_version} (that torch needs {wanted}.x)"
    tag_th, tag_tv = torch_version.partition("+")[2], torchvision_version.partition("+")[2]
    if tag_th and tag_tv and tag_th != tag_tv:
        pair = f"torch {torch_version} and torchvision {torchvision_version}"
        return f"{pair} are different builds (+{tag_th} vs +{tag_tv})"
    return None


def check_torch_builds() -> None:
    """Import torch and torchvision; raise one clear `TorchBuildError` when they do not go together."""
    import torch

    try:
        torchvision = importlib.import_module("torchvision")
    except Exception as exc:  # a mismatched build fails with RuntimeError, AttributeError or ImportError
        raise TorchBuildError(
            f"torchvision cannot be imported with torch {torch.__version__} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); this is what a torchvision built for another torch "
            f"does. Fix: {FIX}."
        ) from None
    problem = pair_problem(torch.__version__, torchvision.__version__)
    if problem:
        raise TorchBuildError(f"{problem}. Fix: {FIX}.")
