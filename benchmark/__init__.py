"""Benchmark harness for backdoor defenses on image classifiers.

Floors, bottom up: `core` (what the methods in `attacks/` and `defenses/` stand on), `weights` (zoo,
checkpoints, model cache), `run` (CLI, cell, sweeps, records), `report` and `perf`.
"""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configs every entry point composes from (and the zoo registry among them).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
