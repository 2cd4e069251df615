"""One cell of the grid, end to end: data -> attack -> model -> evaluate -> defense -> evaluate -> record.

Each step is a function call with plain inputs and outputs; the entry point (`benchmark.run.cli`) seeds,
picks the device and hands over the composed config and the run directory.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from attacks.base import Attack, AttackContext
from attacks.poison import poison_for_training, triggered_test
from benchmark.core.archs import build_classifier
from benchmark.core.augment import AugmentSpec
from benchmark.core.data import DataSplits, ImageSet, TriggeredSet, load_dataset, make_splits
from benchmark.core.download.fetch import sha256_file
from benchmark.core.errors import ConfigError
from benchmark.core.evaluate import Metrics, der, evaluate
from benchmark.core.precision import cpu_name, resolved
from benchmark.core.progress import Progress
from benchmark.core.training import RUNTIME_FIELDS, TrainRecipe, train_classifier
from benchmark.core.validation import Checked, bounded
from benchmark.run.loggers import LoggerConfig, make_logger
from benchmark.run.record import SCHEMA, versions, write_csv, write_result
from benchmark.weights.model_cache import TrainOutcome, cache_key, load_or_train
from benchmark.weights.zoo import ModelSource, model_from_zoo
from defenses.base import CurvePoint, Defense, DefenseData

log = logging.getLogger(__name__)


@dataclass
class DatasetConfig(Checked):
    name: str
    num_classes: int = bounded(10, 2)
    channels: int = bounded(3, 1)
    size: int = bounded(32, 8)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    reserve: int = bounded(1000, 0)
    split_seed: int = 0
    train_limit: int | None = bounded(None, 1)
    test_limit: int | None = bounded(None, 1)
    download: bool = True
    augment: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArchConfig(Checked):
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class CellParts:
    """Everything a cell needs, built and validated from the config before any work starts."""

    dataset: DatasetConfig
    augment: AugmentSpec
    arch: ArchConfig
    attack: Attack
    defense: Defense
    recipe: TrainRecipe
    logger: LoggerConfig
    seed: int
    defense_size: int
    eval_batch: int
    cell: dict[str, Any]
    model: ModelSource = field(default_factory=ModelSource)


def _build(node: DictConfig, base: type) -> Any:
    """Instantiate a `_target_` node (minus its `name`) and check that it is a `base`."""
    params = OmegaConf.to_container(node, resolve=True)
    assert isinstance(params, dict)
    params.pop("name", None)
    target = params.pop("_target_", None)
    if target is None:
        raise ConfigError(f"{base.__name__} config has no _target_")
    cls = get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"_target_={target!r} is not a {base.__name__}")
    try:
        return cls(**params)
    except TypeError as exc:  # unknown or missing parameter names
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def _plain(node: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    out.pop("_target_", None)
    return out


def build_parts(cfg: DictConfig) -> CellParts:
    """Validate the whole config up front: bad values fail here, naming the value and what is allowed."""
    dataset = DatasetConfig(**_plain(cfg.dataset))
    attack = _build(cfg.attack, Attack)
    attack.check_dataset(dataset.num_classes)
    if len(dataset.mean) != dataset.channels or len(dataset.std) != dataset.channels:
        raise ConfigError(f"dataset {dataset.name}: mean/std need {dataset.channels} entries")
    defense_size = int(cfg.defense_data.size)
    if not 1 <= defense_size <= dataset.reserve:
        raise ConfigError(
            f"defense_data.size={defense_size} is out of range: allowed [1, dataset.reserve={dataset.reserve}]"
        )
    seed = cfg.seed
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} is invalid: expected an integer >= 0")
    parts = CellParts(
        dataset=dataset,
        augment=AugmentSpec(**dataset.augment),
        arch=ArchConfig(**_plain(cfg.arch)),
        attack=attack,
        defense=_build(cfg.defense, Defense),
        recipe=TrainRecipe(**_plain(cfg.train)),
        logger=LoggerConfig(**_plain(cfg.logger)),
        seed=seed,
        defense_size=defense_size,
        eval_batch=int(cfg.eval.batch_size),
        cell={
            "attack": cfg.attack.name,
            "dataset": dataset.name,
            "arch": cfg.arch.name,
            "defense": cfg.defense.name,
            "seed": seed,
        },
        model=ModelSource(**_plain(cfg.model)) if "model" in cfg else ModelSource(),
    )
    from benchmark.core.archs import arch_names

    if parts.arch.name not in arch_names():
        raise ConfigError(f"Unknown architecture {parts.arch.name!r}; choose from {', '.join(arch_names())}")
    return parts


@contextlib.contextmanager
def timed(timing: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[phase] = round(timing.get(phase, 0.0) + time.perf_counter() - start, 3)


@dataclass
class CellData:
    """The clean data of a cell; the poisoned training set is built only when a model must be trained."""

    splits: DataSplits
    defense: ImageSet


def prepare_data(parts: CellParts, root: Path, device: torch.device) -> CellData:
    """Load the dataset, split off the reserve and draw the defense data from it."""
    ds = parts.dataset
    train, test = load_dataset(ds.name, root, ds.download)
    splits = make_splits(train, test, ds.num_classes, ds.reserve, ds.split_seed, ds.train_limit, ds.test_limit)
    gen = torch.Generator().manual_seed(parts.seed)
    defense = splits.reserve.subset(torch.randperm(len(splits.reserve), generator=gen)[: parts.defense_size])
    return CellData(
        splits=DataSplits(splits.train, splits.reserve, splits.test.to(device), ds.num_classes),
        defense=defense.to(device),
    )


def _cache_parts(parts: CellParts, device: torch.device) -> dict[str, Any]:
    """Everything except the attack that determines a trained model.

    bf16 training gives another model than fp32, so it is part of the key; fp32 is left out, which keeps the
    keys of models cached before precision was a setting (the device is left out: its kernels differ in the
    last bits only).
    """
    ds = parts.dataset
    key = {
        "dataset": {k: getattr(ds, k) for k in ("name", "reserve", "split_seed", "train_limit", "size")},
        "augment": asdict(parts.augment),
        "arch": asdict(parts.arch),
        "train": {k: v for k, v in asdict(parts.recipe).items() if k not in RUNTIME_FIELDS},
        "seed": parts.seed,
    }
    if resolved(device) == "bf16":
        key["precision"] = "bf16"
    return key


def model_cache_path(parts: CellParts, cache_dir: Path, device: torch.device) -> Path:
    key = cache_key(
        {**_cache_parts(parts, device), "attack": {"class": type(parts.attack).__qualname__, **asdict(parts.attack)}}
    )
    c = parts.cell
    return Path(cache_dir).expanduser() / f"{c['dataset']}-{c['arch']}-{c['attack']}-seed{c['seed']}-{key}.pt"


def clean_model_path(parts: CellParts, cache_dir: Path, device: torch.device) -> Path:
    key = cache_key({**_cache_parts(parts, device), "attack": None})
    c = parts.cell
    return Path(cache_dir).expanduser() / f"{c['dataset']}-{c['arch']}-clean-seed{c['seed']}-{key}.pt"


def new_model(parts: CellParts, device: torch.device) -> nn.Module:
    """An untrained model of the cell's architecture on `device`."""
    ds = parts.dataset
    model = build_classifier(parts.arch.name, ds.num_classes, ds.channels, ds.mean, ds.std, **parts.arch.kwargs)
    return model.to(device, memory_format=torch.channels_last)


def _train_on(parts: CellParts, data: ImageSet, device: torch.device, desc: str, **kw: Any) -> Any:
    """A training function for `load_or_train`: trains a model in place on `data` with the cell's recipe."""

    def train(m: nn.Module) -> TrainOutcome:
        gen = torch.Generator(device).manual_seed(parts.seed)
        start = time.perf_counter()
        history = train_classifier(m, data.to(device), parts.recipe, parts.augment, gen, desc=desc, **kw)
        return {"train_history": history, "train_seconds": round(time.perf_counter() - start, 3)}, {}

    return train


def clean_model(parts: CellParts, data: CellData, cache_dir: Path, device: torch.device) -> nn.Module:
    """A clean model trained on the clean training split (cached): the start of TrojanNN, CL, FC and AWP."""
    meta = {"cell": {**{k: v for k, v in parts.cell.items() if k != "defense"}, "attack": "clean"}}
    train = _train_on(parts, data.splits.train, device, "clean training")
    path = clean_model_path(parts, cache_dir, device)
    model, source, _, _ = load_or_train(path, new_model(parts, device), train, meta)
    log.info("clean model for %s: %s", parts.cell["attack"], source)
    return model.to(device).eval()


def train_backdoored(parts: CellParts, data: CellData, cache_dir: Path, device: torch.device) -> Any:
    """The training function for the backdoored model: prepare the attack, poison, train, keep the trigger."""
    attack, ds = parts.attack, parts.dataset

    def train(m: nn.Module) -> TrainOutcome:
        gen = torch.Generator().manual_seed(parts.seed)
        ctx = AttackContext(
            train=data.splits.train,
            num_classes=ds.num_classes,
            augment=parts.augment,
            recipe=parts.recipe,
            device=device,
            gen=torch.Generator(device).manual_seed(parts.seed + 1),
            clean_model=lambda: clean_model(parts, data, cache_dir, device),
            new_model=lambda: new_model(parts, device),
        )
        start = time.perf_counter()
        attack.prepare(ctx)
        prepare_seconds = time.perf_counter() - start
        poisoned = poison_for_training(data.splits.train, attack, ds.num_classes, gen)
        log.info(
            "poisoned training set: %d images, %d poisoned, %d cover",
            len(poisoned.images),
            len(poisoned.index),
            len(poisoned.cover),
        )
        start = time.perf_counter()
        train_gen = torch.Generator(device).manual_seed(parts.seed)
        history = train_classifier(
            m,
            poisoned.images.to(device),
            attack.adjust_recipe(parts.recipe),
            parts.augment,
            train_gen,
            hook=attack.train_hook(ctx),
            desc="backdoor training",
            monitor=lambda model: _test_metrics(model, parts, data),
        )
        meta = {
            "train_history": history,
            "train_seconds": round(time.perf_counter() - start, 3),
            "attack_prepare_seconds": round(prepare_seconds, 3),
            "poisoned": len(poisoned.index),
            "cover": len(poisoned.cover),
            "runtime": runtime_info(device),
        }
        return meta, attack.trigger_state()

    return train


def _test_metrics(model: nn.Module, parts: CellParts, data: CellData) -> dict[str, float]:
    """Test metrics of the model in training, for its history only (`train.eval_every`, off by default)."""
    triggered = triggered_test(data.splits.test, parts.attack, parts.dataset.num_classes)
    metrics = evaluate(model, data.splits.test, triggered, parts.eval_batch)
    return {f"test_{k}": v for k, v in metrics.as_dict().items()}


def zoo_key(parts: CellParts) -> str:
    """The zoo's key for the cell's model: `dataset/arch/attack`."""
    c = parts.cell
    return f"{c['dataset']}/{c['arch']}/{c['attack']}"


def zoo_settings(parts: CellParts) -> dict[str, Any]:
    """The cell's settings as the zoo compares them with an entry's: attack params, arch kwargs, dataset fields."""
    settings = {f"attack.{k}": v for k, v in asdict(parts.attack).items()}
    settings.update({f"arch.kwargs.{k}": v for k, v in parts.arch.kwargs.items()})
    settings.update({f"dataset.{k}": v for k, v in asdict(parts.dataset).items()})
    return settings


def obtain_model(
    parts: CellParts, data: CellData, cache_dir: Path, device: torch.device
) -> tuple[nn.Module, str, dict]:
    """The backdoored model, with the attack's trigger state restored: from the zoo, the cache, else trained."""
    zoo = model_from_zoo(
        parts.model, zoo_key(parts), zoo_settings(parts), parts.attack, lambda: new_model(parts, device)
    )
    if zoo is not None:
        return zoo.model.to(device), "zoo", zoo.meta
    meta = {"cell": {k: v for k, v in parts.cell.items() if k != "defense"}}
    train = train_backdoored(parts, data, cache_dir, device)
    path = model_cache_path(parts, cache_dir, device)
    model, source, meta, trigger = load_or_train(path, new_model(parts, device), train, meta)
    if source == "cache":
        parts.attack.load_trigger_state({k: v.to(device) for k, v in trigger.items()})
    return model.to(device), source, {**meta, "sha256": sha256_file(path)}


def evaluate_curve(
    curve: list[CurvePoint], test: ImageSet, triggered: TriggeredSet, batch_size: int
) -> list[dict[str, Any]]:
    """Metrics for every point of a defense's curve — for the record, never for selecting the model."""
    rows, seen = [], {}
    progress = Progress("defense curve", len(curve), "point", logger=log)
    for point in curve:
        if point.key is None or point.key not in seen:
            metrics = evaluate(point.build(), test, triggered, batch_size)
            if point.key is not None:
                seen[point.key] = metrics
        else:
            metrics = seen[point.key]
        rows.append({**point.params, **{k: round(v, 6) for k, v in metrics.as_dict().items()}})
        progress.update(rows[-1])
    progress.close()
    return rows


def run_cell(cfg: DictConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """Run one cell and write `result.json` (+ `curve.csv`) into `run_dir`; returns the result."""
    start = time.perf_counter()
    timing: dict[str, float] = {}
    parts = build_parts(cfg)
    c = parts.cell
    log.info("cell: %s", ", ".join(f"{k}={v}" for k, v in c.items()))
    with timed(timing, "data"):
        data = prepare_data(parts, Path(cfg.paths.data), device)
    log.info(
        "data: %d train, %d reserve, %d test, %d defense images",
        len(data.splits.train),
        len(data.splits.reserve),
        len(data.splits.test),
        len(data.defense),
    )
    with timed(timing, "model"):
        model, source, meta = obtain_model(parts, data, Path(cfg.paths.cache), device)
    with timed(timing, "data"):
        triggered = triggered_test(data.splits.test, parts.attack, parts.dataset.num_classes)
    log.info("triggered test set: %d images", len(triggered.images))
    with timed(timing, "evaluate"):
        before = evaluate(model, data.splits.test, triggered, parts.eval_batch)
    log.info("before: %s", _fmt(before))
    gen = torch.Generator(device).manual_seed(parts.seed)
    with timed(timing, "defense"):
        out = parts.defense(model, DefenseData(data.defense, parts.augment, parts.dataset.num_classes), gen)
    with timed(timing, "evaluate"):
        after = evaluate(out.model, data.splits.test, triggered, parts.eval_batch)
    with timed(timing, "curve"):
        curve_rows = evaluate_curve(out.curve, data.splits.test, triggered, parts.eval_batch)
    log.info("after:  %s", _fmt(after))
    timing["total"] = round(time.perf_counter() - start, 3)
    result = {
        "schema": SCHEMA,
        "cell": c,
        "model_source": source,
        "model_sha256": meta.get("sha256"),
        "before": before.as_dict(),
        "after": after.as_dict(),
        "der": der(before, after),
        "defense_info": {**out.info, "curve": curve_rows} if curve_rows else out.info,
        "timing_s": timing,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": versions(),
        "runtime": runtime_info(device),
        "model_meta": {
            k: meta.get(k) for k in ("train_seconds", "attack_prepare_seconds", "poisoned", "cover", "zoo", "runtime")
        },
    }
    write_result(run_dir, result)
    write_csv(run_dir / "curve.csv", curve_rows)
    logger = make_logger(
        parts.logger,
        run_dir,
        "-".join(str(v) for v in c.values()),
        result["config"],
        job_type=str(c["defense"]),
    )
    try:
        logger.log_cell(result, curve_rows)
    finally:
        logger.finish()
    log.info("wrote %s (total %.1f s)", run_dir / "result.json", timing["total"])
    return result


def runtime_info(device: torch.device) -> dict[str, Any]:
    """How the numbers were computed: device, CPU model, precision and threads (they move the last digits)."""
    return {
        "device": str(device),
        "cpu": cpu_name(),
        "precision": resolved(device),
        "torch_threads": torch.get_num_threads(),
    }


def _fmt(m: Metrics) -> str:
    return f"clean acc {m.clean_acc:.4f}  ASR {m.asr:.4f}  robust acc {m.robust_acc:.4f}"
