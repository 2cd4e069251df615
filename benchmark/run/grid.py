"""A sweep's grid, read once before the sweep starts (the Hydra callback `GridCheck`).

Two checks, both before any cell runs:
- every `group=option` the grid names exists (Hydra composes a cell only when it launches it, so a missing
  option would stop the sweep halfway);
- every swept setting that is not a cell coordinate gets its own directory level. The sweep dir keys a cell by
  `<dataset>/<arch>/<attack>/<defense>/seed<N>`: a grid over anything else (`attack.poison_rate=0.05,0.1`,
  `train.epochs=2,6`, `train=cifar,quick`) would put several cells in one directory, each overwriting the one
  before, and resume could never hold. So such keys lead the path, Hydra-style:
  `<sweep>/attack.poison_rate=0.05/<dataset>/<arch>/<attack>/<defense>/seed<N>`, unless the subdir pattern
  already spells them (experiment=scale_study does).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from benchmark import EXTRA_SEARCHPATH
from benchmark.run.key import CELL_FIELDS
from benchmark.run.record import IGNORED_KEYS
from benchmark.run.runtime import CONF_DIR

log = logging.getLogger("benchmark")


def grid_values(config: DictConfig) -> dict[str, list[str]]:
    """Per key, every value the sweep will use: `hydra.sweeper.params` updated by the command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    lines = [f"{k}={v}" for k, v in params.items()]
    lines += list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
    out: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(lines):
        if o.is_delete() or o.is_add() or o.is_force_add():
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        out[o.key_or_group] = values  # a later (command-line) entry replaces the preset's list
    return out


def search_dirs(config: DictConfig) -> list[Path]:
    """The config folders beside conf/: the studies' presets and those a user added with
    `hydra.searchpath=[file:///lab/conf]` (lab presets)."""
    dirs = []
    for entry in [*EXTRA_SEARCHPATH, *(OmegaConf.select(config, "hydra.searchpath", default=None) or [])]:
        if str(entry).startswith("file://"):
            dirs.append(Path(str(entry)[len("file://") :]))
        elif str(entry).startswith("pkg://"):
            with contextlib.suppress(ImportError, TypeError):
                dirs.append(Path(str(importlib.resources.files(str(entry)[len("pkg://") :].replace("/", ".")))))
    return dirs


def config_dirs(config: DictConfig, conf_dir: Path = Path(CONF_DIR)) -> list[Path]:
    """conf/ and the config folders the user added to the search path: where a group's options live."""
    return [Path(conf_dir), *search_dirs(config)]


def missing_options(config: DictConfig, conf_dir: Path) -> list[str]:
    """`group=option` entries of the grid with no <group>/<option>.yaml in conf/ or a folder the user added
    to the search path, as messages naming the choices."""
    problems = []
    dirs = config_dirs(config, conf_dir)
    for key, values in grid_values(config).items():
        groups = [d / key for d in dirs if (d / key).is_dir()]
        if "/" in key or not groups:
            continue
        choices = sorted({p.stem for group in groups for p in group.glob("*.yaml")})
        missing = [v for v in values if v not in choices and v != "null"]
        if missing:
            problems.append(f"{key}={','.join(missing)} not in conf/{key}/; choose from {', '.join(choices)}")
    return problems


def _ignored(key: str) -> bool:
    """Settings resume ignores (paths, threads, ...) do not change a cell's result: no level of their own."""
    return any(key == k or key.startswith(f"{k}.") for k in IGNORED_KEYS)


def swept_settings(config: DictConfig) -> list[str]:
    """Keys the grid gives more than one value that are not cell coordinates, in the grid's order."""
    return [
        key
        for key, values in grid_values(config).items()
        if len(set(values)) > 1
        and key not in CELL_FIELDS  # the default subdir spells them
        and "/" not in key  # hydra/launcher=... and the like choose how cells run, not what they compute
        and not key.startswith("hydra.")
        and not _ignored(key)
    ]


def spelt_in(pattern: str, key: str) -> bool:
    """Whether a subdir pattern already interpolates `key` (`${train.epochs}`, `runtime.choices.train}`)."""
    return re.search(rf"(?:^|[^\w.]|choices\.){re.escape(key)}(?![\w.])", pattern) is not None


def settings_level(keys: list[str], groups: set[str]) -> str:
    """The directory level that spells the swept settings: `attack.poison_rate=${attack.poison_rate},...`."""
    ref = {k: f"${{hydra:runtime.choices.{k}}}" if k in groups else f"${{{k}}}" for k in keys}
    return ",".join(f"{k}={ref[k]}" for k in keys)


def _group_names(config: DictConfig) -> set[str]:
    return {p.name for d in config_dirs(config) if d.is_dir() for p in d.iterdir() if p.is_dir()}


def add_settings_level(config: DictConfig) -> str | None:
    """Give the sweep's non-coordinate settings a leading directory level; returns the new subdir pattern.

    Each job's config is composed again from `hydra.overrides.hydra` plus its own overrides, so the pattern is
    added there (and to this config, which the callbacks after this one see).
    """
    pattern = str(OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"])
    keys = [k for k in swept_settings(config) if not spelt_in(pattern, k)]
    if not keys:
        return None
    subdir = f"{settings_level(keys, _group_names(config))}/{pattern}"
    escaped = subdir.replace("\\", "\\\\").replace("'", "\\'")
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.hydra.append(f"hydra.sweep.subdir='{escaped}'")
        config.hydra.sweep.subdir = subdir
    log.info("sweep: %s varies over the grid: each value gets its own directory level", ", ".join(keys))
    return subdir


class GridCheck(Callback):
    """Hydra callback: before a sweep starts, check its options and give swept settings their own level."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problems = missing_options(config, Path(CONF_DIR))
        if problems:
            for p in problems:
                log.error("sweep: %s", p)
            sys.exit(2)
        add_settings_level(config)
