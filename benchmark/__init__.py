"""Benchmark harness for backdoor defenses on image classifiers.

Floors, bottom up: `core` (what the methods in `attacks/` and `defenses/` stand on), `weights` (zoo,
checkpoints, model cache), `run` (CLI, cell, sweeps, records) and `report`. The studies (scale study, perf,
GPU check) live apart, in the top-level `studies` package, which imports this one and is never imported by it.
"""

from pathlib import Path

__version__ = "0.1.0"


def _conf_dir() -> Path:
    """The Hydra configs every entry point composes from (and the zoo registry among them).

    Installed from a wheel they are the data package `benchmark.conf` (pyproject maps the top-level
    `conf/` there); in a checkout, editable install or not, they are the top-level `conf/` itself.
    """
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if (packaged / "config.yaml").is_file() else here.parent / "conf"


CONF_DIR = str(_conf_dir())

# Config folders Hydra searches after conf/ for every entry point (hydra_plugins/benchmark_searchpath): the
# studies' presets. A string, not an import: the product never imports the studies.
EXTRA_SEARCHPATH = ("pkg://studies.conf",)
