"""Where a cell's backdoored model comes from: the zoo, else a cache hit, else prepare the attack, poison,
train and store it in the cache.

Cache keys hold everything that determines a trained model (dataset and split, augmentation, arch,
recipe, seed, the attack and its parameters, bf16), so every defense cell of a grid shares one model.
Attacks that start from a clean model (TrojanNN, CL, FC, AWP) get it from the same cache.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks.base import AttackContext
from attacks.none import NoAttack
from attacks.poison import poison_for_training, triggered_test
from benchmark.core.archs import build_classifier
from benchmark.core.data import DataSplits, ImageSet
from benchmark.core.evaluate import evaluate
from benchmark.core.io import own_home
from benchmark.core.training import RUNTIME_FIELDS, train_classifier
from benchmark.run.config import RunConfig
from benchmark.run.runtime import runtime_info
from benchmark.run.streams import STREAMS_VERSION, Streams
from benchmark.weights import model_cache
from benchmark.weights.checkpoint import weights_digest
from benchmark.weights.local import LocalSettings, model_from_path
from benchmark.weights.model_cache import cache_key
from benchmark.weights.zoo import model_from_zoo

log = logging.getLogger(__name__)


@dataclass
class CellData:
    """The clean data of a cell; the poisoned training set is built only when a model must be trained."""

    splits: DataSplits
    defense: ImageSet


def _cache_parts(rc: RunConfig, device: torch.device) -> dict[str, Any]:
    """Everything except the attack that determines a trained model.

    bf16 training gives another model than fp32, so it is part of the key; fp32 is left out, which keeps the
    keys of models cached before precision was a setting (the device is left out: its kernels differ in the
    last bits only).
    """
    ds = rc.dataset
    key = {
        "dataset": {k: getattr(ds, k) for k in ("name", "reserve", "split_seed", "train_limit", "size")},
        "augment": asdict(rc.augment),
        "arch": asdict(rc.arch),
        "train": {k: v for k, v in asdict(rc.recipe).items() if k not in RUNTIME_FIELDS},
        "seed": rc.seed,
        "streams": STREAMS_VERSION,  # the same seed draws another model from other streams
    }
    if rc.precision.resolved(device) == "bf16":
        key["precision"] = "bf16"
    return key


def model_cache_path(rc: RunConfig, cache_dir: Path, device: torch.device) -> Path:
    """The cell's backdoored model's cache entry (`.safetensors`; an older `.pt` of the same stem is migrated)."""
    key = cache_key(
        {**_cache_parts(rc, device), "attack": {"class": type(rc.attack).__qualname__, **asdict(rc.attack)}}
    )
    c = rc.key
    return Path(cache_dir).expanduser() / f"{c.dataset}-{c.arch}-{c.attack}-seed{c.seed}-{key}.safetensors"


def clean_model_path(rc: RunConfig, cache_dir: Path, device: torch.device) -> Path:
    """The cell's clean model's cache entry: its key leaves the attack out, so every attack shares it."""
    key = cache_key({**_cache_parts(rc, device), "attack": None})
    c = rc.key
    return Path(cache_dir).expanduser() / f"{c.dataset}-{c.arch}-clean-seed{c.seed}-{key}.safetensors"


def new_model(rc: RunConfig, device: torch.device) -> nn.Module:
    """An untrained model of the cell's architecture on `device`."""
    ds = rc.dataset
    model = build_classifier(rc.arch.name, ds.num_classes, ds.channels, ds.mean, ds.std, **rc.arch.kwargs)
    return model.to(device, memory_format=torch.channels_last)


def zoo_settings(rc: RunConfig) -> dict[str, Any]:
    """The cell's settings as the zoo compares them with an entry's: attack params, arch kwargs, dataset fields."""
    settings = {f"attack.{k}": v for k, v in asdict(rc.attack).items()}
    settings.update({f"arch.kwargs.{k}": v for k, v in rc.arch.kwargs.items()})
    settings.update({f"dataset.{k}": v for k, v in asdict(rc.dataset).items()})
    return settings


@dataclass(frozen=True)
class Job:
    """What obtaining a cell's model works from: the typed run config, the cell's clean data, the device."""

    rc: RunConfig
    data: CellData
    device: torch.device

    def new_model(self) -> nn.Module:
        return new_model(self.rc, self.device)


@dataclass(frozen=True)
class Obtained:
    """A cell's model and its provenance: "path", "zoo", "cache" or "trained", and the metadata result.json
    records; `bd_test`: a poisoned test set the model's file carries (BackdoorBench's), evaluated beside ours."""

    model: nn.Module
    source: str
    meta: dict[str, Any]
    bd_test: ImageSet | None = None


@dataclass(frozen=True)
class Trained:
    """What training a backdoored model yields besides the weights: its metadata and the attack's trigger."""

    meta: dict[str, Any]
    trigger: dict[str, torch.Tensor]


def _cell_meta(rc: RunConfig, attack: str | None = None) -> dict[str, Any]:
    """The cell a cached model belongs to (no defense: every defense cell shares it)."""
    cell = {k: v for k, v in rc.cell.items() if k != "defense"}
    return {"cell": {**cell, "attack": attack} if attack else cell}


def train_clean(job: Job, model: nn.Module) -> dict[str, Any]:
    """Train `model` with the cell's recipe on the clean training split; its metadata."""
    rc, device = job.rc, job.device
    start = time.perf_counter()
    history = train_classifier(
        model,
        job.data.splits.train.to(device),
        rc.recipe,
        rc.augment,
        Streams(rc.seed).train(device),
        desc="clean training",
        precision=rc.precision,
        compilation=rc.compilation,
    )
    seconds = round(time.perf_counter() - start, 3)
    runtime = runtime_info(device, rc.precision, rc.compilation)
    return {"train_history": history, "train_seconds": seconds, "runtime": runtime}


def own_cache(rc: RunConfig) -> Path:
    """Where new entries go when `paths.cache` is a shared cache mounted read-only: the user's own cache."""
    return own_home() / "models"


def clean_model(job: Job) -> Obtained:
    """The clean model (cached): the start of TrojanNN, CL, FC and AWP, and the model of `attack=none` cells."""
    path = clean_model_path(job.rc, Path(job.rc.paths.cache), job.device)
    with model_cache.entry(path, job.new_model(), own_cache(job.rc)) as e:
        if not e.hit:
            e.store({**_cell_meta(job.rc, "clean"), **train_clean(job, e.model)}, {})
    log.info("clean model for %s: %s", job.rc.key.attack, e.source)
    return Obtained(e.model.to(job.device), e.source, {**e.meta, "sha256": e.sha256})


def train_backdoored(job: Job, model: nn.Module) -> Trained:
    """Prepare the attack, poison the training split and train `model` on it; the trigger it learned."""
    rc, data, device = job.rc, job.data, job.device
    attack, ds, streams = rc.attack, rc.dataset, Streams(rc.seed)
    ctx = AttackContext(
        train=data.splits.train,
        num_classes=ds.num_classes,
        augment=rc.augment,
        recipe=rc.recipe,
        device=device,
        gen=streams.attack(device),
        clean_model=lambda: clean_model(job).model.eval(),
        new_model=job.new_model,
    )
    start = time.perf_counter()
    attack.prepare(ctx)
    prepare_seconds = time.perf_counter() - start
    poisoned = poison_for_training(data.splits.train, attack, ds.num_classes, streams.poison())
    log.info(
        "poisoned training set: %d images, %d poisoned, %d cover",
        len(poisoned.images),
        len(poisoned.index),
        len(poisoned.cover),
    )
    start = time.perf_counter()
    history = train_classifier(
        model,
        poisoned.images.to(device),
        attack.adjust_recipe(rc.recipe),
        rc.augment,
        streams.train(device),
        hook=attack.train_hook(ctx),
        desc="backdoor training",
        monitor=lambda m: _test_metrics(m, rc, data),
        precision=rc.precision,
        compilation=rc.compilation,
    )
    meta = {
        "train_history": history,
        "train_seconds": round(time.perf_counter() - start, 3),
        "attack_prepare_seconds": round(prepare_seconds, 3),
        "poisoned": len(poisoned.index),
        "cover": len(poisoned.cover),
        "runtime": runtime_info(device, rc.precision, rc.compilation),
    }
    return Trained(meta, attack.trigger_state())


def _test_metrics(model: nn.Module, rc: RunConfig, data: CellData) -> dict[str, float]:
    """Test metrics of the model in training, for its history only (`train.eval_every`, off by default)."""
    triggered = triggered_test(data.splits.test, rc.attack, rc.dataset.num_classes)
    metrics = evaluate(model, data.splits.test, triggered, rc.eval.batch_size, rc.precision)
    return {f"test_{k}": v for k, v in metrics.as_dict().items()}


def backdoored_model(job: Job) -> Obtained:
    """The backdoored model from the cache, else trained and stored; the attack's trigger state restored."""
    rc, device = job.rc, job.device
    with model_cache.entry(model_cache_path(rc, Path(rc.paths.cache), device), job.new_model(), own_cache(rc)) as e:
        if e.hit:
            rc.attack.load_trigger_state({k: v.to(device) for k, v in e.trigger.items()})
        else:
            trained = train_backdoored(job, e.model)
            e.store({**_cell_meta(rc), **trained.meta}, trained.trigger)
    return Obtained(e.model.to(device), e.source, {**e.meta, "sha256": e.sha256})


def obtain_model(rc: RunConfig, data: CellData, device: torch.device) -> Obtained:
    """The cell's backdoored model: from the zoo, else the cache, else trained (then cached).

    For `attack=none` it is the clean model, from the clean model's cache entry (trained once for both).
    """
    job = Job(rc, data, device)
    if rc.model.path:
        local = model_from_path(
            _local_settings(rc), (rc.arch.name, rc.arch.kwargs, rc.dataset.num_classes), rc.attack, job.new_model
        )
        meta = {**local.meta, "weights_sha256": weights_digest(local.model)}
        bd_test = local.bd_test.to(device) if local.bd_test is not None else None
        return Obtained(local.model.to(device), "path", meta, bd_test)
    zoo = model_from_zoo(rc.model, rc.key.model_key(), zoo_settings(rc), rc.attack, job.new_model)
    if zoo is not None:
        obtained = Obtained(zoo.model.to(device), "zoo", zoo.meta)
    elif isinstance(rc.attack, NoAttack):  # one cache entry with the clean-model attacks' start
        obtained = clean_model(job)
    else:
        obtained = backdoored_model(job)
    return Obtained(
        obtained.model, obtained.source, {**obtained.meta, "weights_sha256": weights_digest(obtained.model)}
    )


def _local_settings(rc: RunConfig) -> LocalSettings:
    m = rc.model
    return LocalSettings(str(m.path), m.state_dict_key, tuple(m.strip_prefix), dict(m.rename))
