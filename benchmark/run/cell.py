"""One cell of the grid, end to end: data -> attack -> model -> evaluate -> defense -> evaluate -> record.

Each step is a function call with plain inputs and outputs; the entry point (`benchmark.run.cli`, or
`benchmark.run.sweep` for a sweep job) types the config, seeds, picks the device and hands over the run
config and the run directory. Where the model comes from
is `benchmark.run.model`; what the result holds is `benchmark.run.record`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from attacks.poison import triggered_test
from benchmark.core.data import DataSplits, ImageSet, TriggeredSet, make_splits
from benchmark.core.errors import ConfigError
from benchmark.core.evaluate import Metrics, accuracy, evaluate
from benchmark.core.io import write_probe
from benchmark.core.precision import Precision
from benchmark.core.premise import implant_check, premise_verdict
from benchmark.core.progress import Progress
from benchmark.run.config import RunConfig, check_writable
from benchmark.run.loggers import make_logger
from benchmark.run.model import CellData, obtain_model, own_cache
from benchmark.run.natural import natural_asr, natural_attacks, natural_record
from benchmark.run.record import assemble_result, write_csv, write_result
from benchmark.run.runtime import runtime_info
from benchmark.run.streams import Streams
from benchmark.sources import load_dataset
from benchmark.sources.source import Source, file_specs
from benchmark.weights.learned_cache import LearnedCache
from defenses.base import CurvePoint, DefenseData

log = logging.getLogger(__name__)


@contextlib.contextmanager
def timed(timing: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[phase] = round(timing.get(phase, 0.0) + time.perf_counter() - start, 3)


def check_image_size(name: str, size: int, shape: tuple[int, ...]) -> None:
    """The images must be `dataset.size` square: a dataset that does not resize would else be recorded wrongly."""
    if shape != (size, size):
        raise ConfigError(
            f"dataset.size={size} is invalid for {name}: its images are {shape[0]}x{shape[1]} and it does not "
            f"resize them (allowed: {shape[0]})"
        )


def prepare_data(rc: RunConfig, device: torch.device) -> CellData:
    """Load the dataset, split off the reserve and draw the defense data from it."""
    ds = rc.dataset
    source = Source(ds.download, file_specs(ds.files), ds.mirror, ds.size)
    train, test = load_dataset(ds.name, Path(rc.paths.data), source)
    check_image_size(ds.name, ds.size, tuple(train.x.shape[-2:]))
    splits = make_splits(train, test, ds.num_classes, ds.reserve, ds.split_seed, ds.train_limit, ds.test_limit)
    pick = torch.randperm(len(splits.reserve), generator=Streams(rc.seed).defense_subset())[: rc.defense_data.size]
    return CellData(
        splits=DataSplits(splits.train, splits.reserve, splits.test.to(device), ds.num_classes),
        defense=splits.reserve.subset(pick).to(device),
    )


def select_points(curve: list[CurvePoint], points: int | None) -> list[CurvePoint]:
    """`defense.curve`: every point (None), none (0), or `points` spread evenly from the first to the last.

    Points are built only when evaluated, so a shorter curve saves its evaluations and draws no random numbers.
    """
    if points is None or points >= len(curve):
        return curve
    if points <= 1:
        return curve[:points]
    return [curve[round(i * (len(curve) - 1) / (points - 1))] for i in range(points)]


def evaluate_curve(
    curve: list[CurvePoint], test: ImageSet, triggered: TriggeredSet, batch_size: int, precision: Precision
) -> list[dict[str, Any]]:
    """Metrics for every point of a defense's curve — for the record, never for selecting the model."""
    rows, seen = [], {}
    progress = Progress("defense curve", len(curve), "point", logger=log)
    for point in curve:
        if point.key is None or point.key not in seen:
            metrics = evaluate(point.build(), test, triggered, batch_size, precision)
            if point.key is not None:
                seen[point.key] = metrics
        else:
            metrics = seen[point.key]
        rows.append({**point.params, **{k: round(v, 6) for k, v in metrics.as_dict().items()}})
        progress.update(rows[-1])
    progress.close()
    return rows


def check_cache(cache: Path, own: Path) -> None:
    """paths.cache must be writable, unless it is a shared cache mounted read-only and the user's own is not."""
    if cache.resolve() == own.resolve() or not cache.is_dir() or write_probe(cache) is None:
        check_writable(cache, "paths.cache")
        return
    check_writable(own, "the own model cache (paths.cache is read-only)")
    log.info(
        "model cache: paths.cache=%s is read-only: verified models are read from it, new ones go to %s", cache, own
    )


def learned_store(rc: RunConfig, device: torch.device) -> LearnedCache | None:
    """Where mask-pruning defenses keep their learned masks (`reuse_learned`): `<paths.cache>/learned`, or the
    own cache's when paths.cache is a shared read-only one."""
    if not rc.reuse_learned:
        return None
    cache = Path(rc.paths.cache).expanduser()
    root = cache if not cache.is_dir() or write_probe(cache) is None else own_cache(rc)
    return LearnedCache(root / "learned", runtime_info(device, rc.precision, rc.compilation))


def reused_seconds(info: dict[str, Any]) -> float | None:
    """The learning seconds a cell took from the cache instead of spending them (None: it learned, or no store)."""
    record = info.get("learned_masks")
    if isinstance(record, dict) and record.get("reused"):
        return float(record["learned_seconds"])
    return None


def run_cell(rc: RunConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
    """Run one cell and write `result.json` (+ `curve.csv`) into `run_dir`; returns the result."""
    start = time.perf_counter()
    timing: dict[str, float] = {}
    check_writable(run_dir, "the run directory")
    check_cache(Path(rc.paths.cache).expanduser(), own_cache(rc))
    natural = natural_attacks(rc.attack, rc.dataset.name, rc.dataset.num_classes)  # attack=none only
    log.info("cell: %s", ", ".join(f"{k}={v}" for k, v in rc.cell.items()))
    with timed(timing, "data"):
        data = prepare_data(rc, device)
    log.info(
        "data: %d train, %d reserve, %d test, %d defense images",
        len(data.splits.train),
        len(data.splits.reserve),
        len(data.splits.test),
        len(data.defense),
    )
    test, batch, precision = data.splits.test, rc.eval.batch_size, rc.precision
    with timed(timing, "model"):
        obtained = obtain_model(rc, data, device)
        model = obtained.model
    with timed(timing, "data"):
        triggered = triggered_test(test, rc.attack, rc.dataset.num_classes)
    log.info("triggered test set: %d images", len(triggered.images))
    with timed(timing, "evaluate"):
        before = evaluate(model, test, triggered, batch, precision)
        natural_before = natural_asr(model, test, natural, rc.dataset.num_classes, batch, precision)
    if obtained.bd_test is not None:  # the model file's own poisoned test set (BackdoorBench's bd_test)
        asr = round(accuracy(model, obtained.bd_test, batch, precision), 6)
        obtained.meta["bd_test"] = {"images": len(obtained.bd_test), "asr_before": asr}
    log.info("before: %s", _fmt(before))
    implant = implant_record(rc, before)
    with timed(timing, "defense"):
        store = learned_store(rc, device)
        defense_data = DefenseData(data.defense, rc.augment, rc.dataset.num_classes, precision, store, rc.compilation)
        out = rc.defense(model, defense_data, Streams(rc.seed).defense(device))
    reused = reused_seconds(out.info)
    if reused is not None:  # the learning this cell took from the cache: the defense's cost, not spent here
        timing["defense_reused"] = reused
    with timed(timing, "evaluate"):
        after = evaluate(out.model, test, triggered, batch, precision)
        natural_after = natural_asr(out.model, test, natural, rc.dataset.num_classes, batch, precision)
    curve = select_points(out.curve, rc.curve)
    curve_rows = []
    if curve:  # defense.curve=off: no curve, no curve timing, no curve.csv
        with timed(timing, "curve"):
            curve_rows = evaluate_curve(curve, test, triggered, batch, precision)
    log.info("after:  %s", _fmt(after))
    if obtained.bd_test is not None:
        obtained.meta["bd_test"]["asr_after"] = round(accuracy(out.model, obtained.bd_test, batch, precision), 6)
    timing["total"] = round(time.perf_counter() - start, 3)
    config = rc.resolved
    result = assemble_result(
        rc.cell,
        (obtained.source, obtained.meta),
        before,
        after,
        out.info,
        curve_rows,
        timing,
        config,
        runtime_info(device, precision, rc.compilation),
    )
    result["premise"] = premise_verdict(rc.key.defense, out.info.get("diagnostics"))
    log.info("premise of %s: %s", rc.key.defense, result["premise"])
    if implant is not None:
        result["implant"] = implant
    if natural:
        result["natural_asr"] = natural_record(rc.attack, natural, natural_before, natural_after)
        log.info("natural ASR before: %s; after: %s", natural_before, natural_after)
    write_result(run_dir, result)
    write_csv(run_dir / "curve.csv", curve_rows)
    logger = make_logger(rc.logger, run_dir, rc.key.label(), config, job_type=rc.key.defense)
    try:
        logger.log_cell(result, curve_rows)
    finally:
        logger.finish()
    log.info("wrote %s (total %.1f s)", run_dir / "result.json", timing["total"])
    return result


def implant_record(rc: RunConfig, before: Metrics) -> dict[str, Any] | None:
    """Whether the backdoor took (ASR before >= eval.implant_bar); a warning when it did not. None for the
    clean model (attack=none), which has no backdoor to implant."""
    if rc.key.attack == "none":
        return None
    implant = implant_check(before.asr, rc.eval.implant_bar)
    if not implant["held"]:
        log.warning(
            "the backdoor did not implant: ASR before %.4f < eval.implant_bar=%s; this cell's defense result "
            "measures nothing and the report never ranks it",
            before.asr,
            rc.eval.implant_bar,
        )
    return implant


def _fmt(m: Metrics) -> str:
    return f"clean acc {m.clean_acc:.4f}  ASR {m.asr:.4f}  robust acc {m.robust_acc:.4f}"
