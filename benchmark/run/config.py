"""The run config, typed and checked once: every value a cell, a sweep job or export reads comes from here.

`build_run_config` turns Hydra's composed config into a `RunConfig` at the entry (the CLI for one cell, the
sweep for a job), before any work starts, so a bad value stops the run naming the value and what is allowed;
everything below the entry reads the typed config, never the raw `DictConfig`. Its `key` (`CellKey`,
benchmark.run.key) is the one identity of the cell.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from attacks.base import Attack
from benchmark.core.archs import arch_names
from benchmark.core.augment import AugmentSpec
from benchmark.core.compilation import COMPILE_MODES, EAGER, Compilation
from benchmark.core.errors import ConfigError
from benchmark.core.io import write_probe
from benchmark.core.precision import AUTO, PRECISIONS, Precision
from benchmark.core.premise import IMPLANT_BAR
from benchmark.core.training import TrainRecipe
from benchmark.core.validation import Checked, bounded
from benchmark.run.key import CELL_GROUPS, CellKey
from benchmark.run.loggers import LoggerConfig
from benchmark.weights.zoo import ModelSource
from defenses.base import Defense


@dataclass
class DatasetConfig(Checked):
    name: str
    num_classes: int = bounded(10, 2)
    channels: int = bounded(3, 1)
    size: int = bounded(32, 8, 1024)  # resized once and cached: larger would fill memory and disk
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    reserve: int = bounded(1000, 0)
    split_seed: int = 0
    train_limit: int | None = bounded(None, 1)
    test_limit: int | None = bounded(None, 1)
    download: bool = True
    augment: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)  # archives: role -> {url | gdrive, md5, sha256}
    mirror: str | None = None  # replaces every archive URL up to its file name (top-level `mirror`)


@dataclass
class ArchConfig(Checked):
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PathsConfig(Checked):
    root: str
    data: str
    cache: str


@dataclass
class DefenseDataConfig(Checked):
    size: int = bounded(500, 1)


@dataclass
class EvalConfig(Checked):
    batch_size: int = bounded(512, 1)
    implant_bar: float = bounded(IMPLANT_BAR, 0.0, 1.0)  # ASR before below this: the backdoor did not implant


@dataclass
class RunConfig:
    """Everything a run reads, built and validated from the composed config before any work starts."""

    key: CellKey
    dataset: DatasetConfig
    augment: AugmentSpec
    arch: ArchConfig
    attack: Attack
    defense: Defense
    recipe: TrainRecipe
    logger: LoggerConfig
    model: ModelSource
    paths: PathsConfig
    defense_data: DefenseDataConfig
    eval: EvalConfig
    curve: int | None = None  # defense.curve: None = every point the defense records, 0 = off, N = N of them
    device: str = "auto"
    threads: int | str | None = None
    precision: Precision = AUTO
    compilation: Compilation = EAGER  # `compile`
    resume: bool = True
    reuse_learned: bool = True
    sweep_name: str = "default"
    resolved: dict[str, Any] = field(default_factory=dict)  # the composed config as plain data, for the record

    @property
    def seed(self) -> int:
        return self.key.seed

    @property
    def cell(self) -> dict[str, Any]:
        return self.key.as_dict()


def _plain(node: Any) -> dict[str, Any]:
    out = OmegaConf.to_container(node, resolve=True)
    if not isinstance(out, dict):
        raise ConfigError(f"expected a mapping, got {out!r}")
    out.pop("_target_", None)
    return out


TARGET_PACKAGES = {"Attack": "attacks", "Defense": "defenses"}  # where each kind's classes live


def build_target(node: DictConfig, base: type) -> Any:
    """Instantiate a `_target_` node (minus its `name`) and check that it is a `base`."""
    params = OmegaConf.to_container(node, resolve=True)
    if not isinstance(params, dict):
        raise ConfigError(f"{base.__name__} config must be a mapping, got {params!r}")
    params.pop("name", None)
    target = params.pop("_target_", None)
    if target is None:
        raise ConfigError(f"{base.__name__} config has no _target_")
    package = TARGET_PACKAGES[base.__name__]
    if not (isinstance(target, str) and re.fullmatch(rf"{package}\.[A-Za-z_][\w.]*", target)):
        raise ConfigError(  # checked before importing: a module named here would run its code on import
            f"_target_={target!r} is not allowed for {base.__name__.lower()}: it must be one of the project's own "
            f"classes, {package}.<module>.<Class> (choose an option of its config group instead)"
        )
    try:
        cls = get_class(target)
    except (ImportError, ValueError, AttributeError) as exc:
        raise ConfigError(f"_target_={target!r} cannot be loaded: {str(exc).splitlines()[0]}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"_target_={target!r} is not a {base.__name__}")
    try:
        return cls(**params)
    except TypeError as exc:  # unknown or missing parameter names
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def _without(node: DictConfig, key: str) -> DictConfig:
    """`node` minus a harness setting (e.g. `defense.curve`) that the method's own class does not take."""
    out = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    out.pop(key, None)
    return out


def typed_section(cls: type, node: Any, what: str) -> Any:
    """`cls(**node)`, with unknown or missing keys reported as a config error naming the node."""
    try:
        return cls(**_plain(node))
    except TypeError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def hydra_choices() -> Mapping[str, Any] | None:
    """The option chosen in each config group, when running under Hydra (None when composed by hand)."""
    return HydraConfig.get().runtime.choices if HydraConfig.initialized() else None


def cell_key(cfg: DictConfig, seed: int, choices: Mapping[str, Any] | None) -> CellKey:
    """The cell's coordinates: Hydra's chosen options, which each YAML's `name:` must repeat.

    A copied YAML that kept another file's `name:` would otherwise file its results (and cached model)
    under the wrong cell. Without Hydra's choices (a config composed in code), the `name:` fields are used.
    """
    names = {g: str(cfg[g].name) for g in CELL_GROUPS}
    if choices is not None:
        for g in CELL_GROUPS:
            chosen = choices.get(g)
            if chosen is not None and str(chosen) != names[g]:
                raise ConfigError(
                    f"{g}={chosen} but conf/{g}/{chosen}.yaml says name: {names[g]}; "
                    f"a config's name must be its file name (rename the file or fix its name:)"
                )
    return CellKey(seed=seed, **{g: names[g] for g in CELL_GROUPS})


SEED_RANGE = (0, 2**32 - 1)  # numpy's seed range: every stream of a run comes from this one value


def _int_in(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        allowed = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
        raise ConfigError(f"{name}={value!r} is invalid: expected {allowed}")
    return value


def check_curve(value: Any) -> int | None:
    """`defense.curve`: all (every point, the paper presets' default), off (no curve: 0) or N points (N >= 1)."""
    if value is None or value == "all":
        return None
    if value is False or value == "off":
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"defense.curve={value!r} is invalid: choose all, off, or a number of points >= 1")


def check_threads(value: Any) -> int | str | None:
    """`threads`: null (torch's default), auto (the free cores: os.getloadavg vs the affinity mask), or N >= 1."""
    if value is None or value == "auto":
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"threads={value!r} is invalid: expected auto, null or an integer >= 1")
    return value


def check_settings(cfg: DictConfig) -> dict[str, Any]:
    """The top-level settings, each checked before anything is seeded (numpy takes seeds in [0, 2^32))."""
    threads = cfg.get("threads")
    precision, resume = cfg.get("precision", "auto"), cfg.get("resume", True)
    reuse = cfg.get("reuse_learned", True)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is invalid: choose from {', '.join(PRECISIONS)}")
    compile_mode = cfg.get("compile", "eager")
    if compile_mode not in COMPILE_MODES:  # YAML reads a bare off/no as false: refused too, named as False
        raise ConfigError(f"compile={compile_mode!r} is invalid: choose from {', '.join(COMPILE_MODES)}")
    for name, value in (("resume", resume), ("reuse_learned", reuse)):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} is invalid: expected true or false")
    return {
        "seed": _int_in(cfg.get("seed", 0), "seed", *SEED_RANGE),
        "threads": check_threads(threads),
        "device": str(cfg.get("device", "auto")),
        "precision": precision,
        "compilation": compile_mode,
        "resume": resume,
        "reuse_learned": reuse,
        "sweep_name": str(cfg.get("sweep_name", "default")),
    }


def build_run_config(cfg: DictConfig, choices: Mapping[str, Any] | None = None) -> RunConfig:
    """Validate the whole config up front: bad values fail here, naming the value and what is allowed."""
    try:
        return _build_run_config(cfg, choices)
    except OmegaConfBaseException as exc:  # an unset ${oc.env:NAME}, a missing ??? value, a bad interpolation
        raise ConfigError(unresolved_message(exc)) from None


def unresolved_message(exc: Exception) -> str:
    """One paragraph for a config value OmegaConf cannot resolve."""
    detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    key = getattr(exc, "full_key", None)
    where = f" at {key}" if key else ""
    return (
        f"the config cannot be resolved{where}: {detail}. An ${{oc.env:NAME}} needs NAME set in the environment "
        "(or a default: ${oc.env:NAME,default}); a ??? value needs an override."
    )


def _build_run_config(cfg: DictConfig, choices: Mapping[str, Any] | None) -> RunConfig:
    scalars = check_settings(cfg)
    seed = scalars.pop("seed")
    dataset = typed_section(DatasetConfig, cfg.dataset, "dataset")
    if len(dataset.mean) != dataset.channels or len(dataset.std) != dataset.channels:
        raise ConfigError(f"dataset {dataset.name}: mean/std need {dataset.channels} entries")
    attack = build_target(cfg.attack, Attack)
    attack.check_dataset(dataset.num_classes)
    defense_data = typed_section(DefenseDataConfig, cfg.defense_data, "defense_data")
    if defense_data.size > dataset.reserve:
        raise ConfigError(
            f"defense_data.size={defense_data.size} is out of range: allowed [1, dataset.reserve={dataset.reserve}]"
        )
    arch = typed_section(ArchConfig, cfg.arch, "arch")
    if arch.name not in arch_names():
        raise ConfigError(f"Unknown architecture {arch.name!r}; choose from {', '.join(arch_names())}")
    return RunConfig(
        key=cell_key(cfg, seed, choices if choices is not None else hydra_choices()),
        dataset=dataset,
        augment=AugmentSpec(**dataset.augment),
        arch=arch,
        attack=attack,
        defense=build_target(_without(cfg.defense, "curve"), Defense),
        curve=check_curve(cfg.defense.get("curve")),
        recipe=typed_section(TrainRecipe, cfg.train, "train"),
        logger=typed_section(LoggerConfig, cfg.logger, "logger"),
        model=typed_section(ModelSource, cfg.model, "model") if "model" in cfg else ModelSource(),
        paths=typed_section(PathsConfig, cfg.paths, "paths"),
        defense_data=defense_data,
        eval=typed_section(EvalConfig, cfg.eval, "eval"),
        **{**scalars, "precision": Precision(scalars["precision"]), "compilation": Compilation(scalars["compilation"])},
        resolved=_plain(cfg),
    )


def check_writable(path: Path, what: str) -> None:
    """Fail before any work when `path` (a directory to write into) cannot be created or written."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what}={path} cannot be created: {probe} is a file, not a directory")
    why = write_probe(probe)
    if why:
        raise ConfigError(f"{what}={path} is not writable: {probe} refuses a new file ({why})")
