"""Performance benchmark: how fast this harness runs a cell on the device it runs on.

    python -m studies.perf [--device auto|cpu|cuda|cuda:N] [--size full|cpu-reduced|tiny] [--out FILE]
                             [--threads N] [--seed N] [--compile [MODE]] [--precision auto|fp32|bf16] [--profile]

Fixed workload: CIFAR-shaped synthetic data (3x32x32 uint8, 10 classes, BadNets at 10%) and ResNet-18.
Measures backdoor training throughput, evaluation throughput, RNP and ANP end to end (with their
19-point threshold curves evaluated as a cell does), peak memory, and, in the same process on the same
device and data, the reference RNP's way of running the cell (`studies.perf.reference`), reported as a
ratio reference / ours. `full` is CIFAR-10 sized (the default on CUDA); `cpu-reduced` (the default on
the CPU) shrinks data, width and ANP's iterations so that it finishes in minutes, but keeps what sets the
ratio: the reference's epoch counts, 4 defense batches per epoch, and test images per evaluation at 38x the
defense data (19,000 : 500 in a CIFAR-10 cell); `tiny` is for the smoke test (tests/studies/test_perf.py).
`--profile` adds, per phase, where the time went (torch profiler: top operators by self time); profiling
slows the run, so its timings are not comparable with an unprofiled run's.
Prints one JSON object on stdout and a short summary on stderr. A benchmark, never a test: it asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
import yaml
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from attacks.badnets import BadNets
from attacks.poison import poison_train_split, triggered_test
from benchmark import CONF_DIR
from benchmark.core.archs import build_classifier
from benchmark.core.augment import AugmentSpec
from benchmark.core.compilation import COMPILE_MODES, EAGER, Compilation
from benchmark.core.data import ImageSet, TriggeredSet
from benchmark.core.errors import BenchmarkError, ConfigError, stop_interrupted
from benchmark.core.evaluate import Metrics, evaluate
from benchmark.core.io import atomic_write_json
from benchmark.core.precision import AUTO, PRECISIONS, Precision, cpu_name
from benchmark.core.training import TrainRecipe, train_classifier
from benchmark.run.cell import evaluate_curve
from benchmark.run.config import build_target
from benchmark.run.record import SCHEMA, clean_floats, versions
from benchmark.run.runtime import setup_runtime
from defenses.anp import ANP
from defenses.base import Defense, DefenseData
from defenses.rnp import RNP
from studies.perf.project import from_perf, grid_of
from studies.perf.reference import BATCH as REFERENCE_TEST_BATCH
from studies.perf.reference import loading_seconds, make_loaders, run_reference_rnp, without_target

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # CIFAR-10's, as the reference normalises
TARGET = 0  # the BadNets target class


@dataclass(frozen=True)
class Workload:
    """What one benchmark run does. Training is timed over `train_epochs` after one warm-up epoch."""

    size: str
    train_images: int
    test_images: int
    defense_images: int
    defense_batch: int  # RNP, ANP and the reference's defense loader (128 on 500 images: 4 batches an epoch)
    width: int  # ResNet-18 base width (64 is the standard network)
    train_epochs: int
    train_batch: int
    eval_batch: int
    eval_repeats: int
    rnp_unlearn_epochs: int  # at most; RNP stops early at its clean_threshold, the reference mirrors ours
    rnp_recover_epochs: int
    anp_iterations: int
    num_classes: int = 10
    image_shape: tuple[int, int, int] = (3, 32, 32)


SIZES = {
    "full": Workload("full", 50_000, 10_000, 500, 128, 64, 3, 256, 1024, 5, 20, 20, 2000),
    # 2,560 clean + ~2,300 triggered test images per evaluation = 38 x 128 defense images, as 19,000 : 500
    # eval batch 256: on the CPU smaller batches stay in cache (figures: docs/performance.md)
    "cpu-reduced": Workload("cpu-reduced", 4096, 2560, 128, 32, 16, 1, 128, 256, 2, 20, 20, 50),
    # tiny: width 8, the narrowest ResNet-18 torch 2.14.1 trains on the CPU with channels_last (4-7 crash there)
    "tiny": Workload("tiny", 256, 96, 64, 16, 8, 1, 64, 256, 1, 2, 2, 2),
}


# ---------------------------------------------------------------- data


def synthetic_images(n: int, num_classes: int, seed: int, proto_seed: int = 1234) -> ImageSet:
    """(N, 3, 32, 32) uint8 images a network learns in an epoch or two: a smooth random prototype per class
    plus pixel noise. Every split shares the prototypes (`proto_seed`); `seed` draws labels and noise."""
    g = torch.Generator().manual_seed(proto_seed)
    protos = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=32, mode="bilinear") * 160 + 48
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(num_classes, (n,), generator=g)
    chunks = []
    for i in range(0, n, 8192):  # bounds the float temporaries on CIFAR-10-sized sets
        part = y[i : i + 8192]
        noise = torch.randn(len(part), 3, 32, 32, generator=g) * 40
        chunks.append((protos[part] + noise).round().clamp(0, 255).to(torch.uint8))
    return ImageSet(torch.cat(chunks), y)


@dataclass
class BenchData:
    train: ImageSet  # poisoned, on the device
    test: ImageSet
    triggered: TriggeredSet
    defense: ImageSet  # clean, disjoint from training


def make_data(w: Workload, device: torch.device, seed: int) -> BenchData:
    """Poisoned training set, clean test set with its triggered copy, and clean defense data, on `device`."""
    attack = BadNets(target=TARGET, poison_rate=0.1)
    clean = synthetic_images(w.train_images, w.num_classes, seed + 1)
    train = poison_train_split(clean, attack, w.num_classes, torch.Generator().manual_seed(seed)).images
    test = synthetic_images(w.test_images, w.num_classes, seed + 2).to(device)
    defense = synthetic_images(w.defense_images, w.num_classes, seed + 3)
    return BenchData(train.to(device), test, triggered_test(test, attack, w.num_classes), defense.to(device))


# ---------------------------------------------------------------- timing helpers


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def stopwatch(device: torch.device) -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    sync(device)
    start = time.perf_counter()
    try:
        yield out
    finally:
        sync(device)
        out["s"] = time.perf_counter() - start


class PeakMemory:
    """Peak memory per phase: allocated GPU memory on CUDA; on the CPU the process's peak RSS so far."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.phases = device, {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        if self.device.type == "cuda":
            self.phases[name] = torch.cuda.max_memory_allocated(self.device)
        else:
            self.phases[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def summary(self, cell_phases: tuple[str, ...]) -> dict[str, Any]:
        kind = "cuda_max_memory_allocated" if self.device.type == "cuda" else "ru_maxrss (process peak so far)"
        cell = max((self.phases[p] for p in cell_phases if p in self.phases), default=0)
        return {"kind": kind, "cell_peak_mb": _mb(cell), "per_phase_mb": {k: _mb(v) for k, v in self.phases.items()}}


def _mb(n: int) -> float:
    return round(n / 2**20, 1)


class PhaseProfile:
    """Where each phase's time went (torch profiler), when asked: the top operators by self time.

    Time outside any torch operator (Python, PIL, the DataLoader's collation) is what the operators
    do not account for of the phase's wall time.
    """

    def __init__(self, device: torch.device, enabled: bool, top: int = 8) -> None:
        self.device, self.enabled, self.top, self.phases = device, enabled, top, {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        start = time.perf_counter()
        with torch.profiler.profile(activities=activities) as prof:
            yield
            sync(self.device)
        self.phases[name] = self._table(prof, time.perf_counter() - start)

    def _table(self, prof: torch.profiler.profile, wall: float) -> dict[str, Any]:
        on_gpu = self.device.type == "cuda"
        averages = prof.key_averages()  # seconds for a long phase: computed once
        events = [e for e in averages if (e.self_device_time_total if on_gpu else e.self_cpu_time_total)]
        self_us = [(e.self_device_time_total if on_gpu else e.self_cpu_time_total) for e in events]
        ranked, total = sorted(zip(self_us, events, strict=True), key=lambda r: -r[0]), max(sum(self_us), 1)
        cpu_ops_s = sum(e.self_cpu_time_total for e in averages) / 1e6
        return {
            "wall_s": round(wall, 3),
            "clock": "GPU kernel time" if on_gpu else "CPU time in torch operators",
            "ops_s": round(total / 1e6, 3),
            "outside_torch_ops_s": round(max(0.0, wall - cpu_ops_s), 3),
            "top": [
                {
                    "op": e.key,
                    "self_s": round(us / 1e6, 3),
                    "share": round(us / max(sum(self_us), 1), 3),
                    "calls": e.count,
                }
                for us, e in ranked[: self.top]
            ],
        }


# ---------------------------------------------------------------- the measured phases


def new_model(w: Workload, device: torch.device) -> nn.Module:
    model = build_classifier("resnet18", w.num_classes, 3, MEAN, STD, width=w.width)
    return model.to(device, memory_format=torch.channels_last)


def bench_training(
    model: nn.Module, data: BenchData, w: Workload, compilation: Compilation, seed: int, precision: Precision
) -> dict[str, Any]:
    """One warm-up epoch (cudnn autotuning, compilation), then `train_epochs` timed epochs."""
    device = data.train.x.device
    gen = torch.Generator(device).manual_seed(seed)
    recipe = TrainRecipe(epochs=1, batch_size=w.train_batch, lr=0.05, warmup_epochs=0.5)
    how = {"precision": precision, "compilation": compilation}
    with stopwatch(device) as warm:
        train_classifier(model, data.train, recipe, AugmentSpec(), gen, desc="perf warm-up", **how)
    timed = dataclasses.replace(recipe, epochs=w.train_epochs, warmup_epochs=0.0)
    with stopwatch(device) as t:
        history = train_classifier(model, data.train, timed, AugmentSpec(), gen, desc="perf training", **how)
    per_epoch = (len(data.train) // w.train_batch) * w.train_batch  # drop_last
    return {
        "images_per_s": round(per_epoch * w.train_epochs / t["s"], 1),
        "seconds_per_epoch": round(t["s"] / w.train_epochs, 3),
        "images_per_epoch": per_epoch,
        "epochs_timed": w.train_epochs,
        "warmup_epoch_s": round(warm["s"], 3),
        "final_train_acc": round(history[-1]["train_acc"], 4),
    }


def bench_eval(
    model: nn.Module, data: BenchData, w: Workload, compilation: Compilation, precision: Precision
) -> tuple[dict[str, Any], Metrics]:
    """Clean + triggered test sets in one `evaluate` call, once untimed, then `eval_repeats` times."""
    device = data.test.x.device
    net = compilation.wrap(model, device)
    metrics = evaluate(net, data.test, data.triggered, w.eval_batch, precision)
    with stopwatch(device) as t:
        for _ in range(w.eval_repeats):
            evaluate(net, data.test, data.triggered, w.eval_batch, precision)
    images = len(data.test) + len(data.triggered.images)
    return {
        "images_per_s": round(images * w.eval_repeats / t["s"], 1),
        "seconds_per_pass": round(t["s"] / w.eval_repeats, 4),
        "images_per_pass": images,
        "batch_size": w.eval_batch,
    }, metrics


def bench_defense(
    defense: Defense,
    model: nn.Module,
    data: BenchData,
    w: Workload,
    seed: int,
    precision: Precision,
    compilation: Compilation = EAGER,
    warmup: Defense | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The defense, then its whole threshold curve evaluated as `benchmark.run.cell` does; seconds of each.

    Compiled, `warmup` (the same defense with its loops cut short) runs first, untimed in `seconds`: it compiles
    the graphs the timed run replays; its seconds are reported apart (`compile_warmup_s`), a cost paid once per
    process and shape (inductor also caches on disk)."""
    device = data.test.x.device
    gen = torch.Generator(device).manual_seed(seed)
    dd = DefenseData(data.defense, AugmentSpec(), w.num_classes, precision, compilation=compilation)
    warm: dict[str, float] = {}
    if compilation.enabled and warmup is not None:
        with stopwatch(device) as warm:
            warmup(model, dd, torch.Generator(device).manual_seed(seed))
    with stopwatch(device) as t_def:
        out = defense(model, dd, gen)
    with stopwatch(device) as t_curve:
        rows = evaluate_curve(out.curve, data.test, data.triggered, w.eval_batch, precision)
    figures = {
        "seconds": round(t_def["s"] + t_curve["s"], 3),
        "defense_s": round(t_def["s"], 3),
        "curve_s": round(t_curve["s"], 3),
        "curve_points": len(rows),
        "curve_models_evaluated": len({p.key for p in out.curve}),
        **({"compile_warmup_s": round(warm["s"], 3)} if warm else {}),
    }
    return figures, out.info


SKIPPABLE = ("defenses", "reference")  # phases a run may leave out (--skip); training, evaluation, RNP, ANP always run

# The grid's other defenses, timed at their configured settings (conf/defense/<name>.yaml) for the projection.
OTHER_DEFENSES = ("fp", "clp", "nad", "ft", "ibau")
PROJECTED = "rnp_cifar10"  # the grid a perf run prices (studies.perf.project)


def configured_defense(name: str, debug: bool = False, conf_dir: Path = Path(CONF_DIR)) -> Defense:
    """The defense as a cell builds it from its config file (the harness's `defense.curve` setting left out);
    `debug`: with its loops shrunk as `debug=default` shrinks them (conf/defense_debug/<name>_default.yaml)."""
    node = OmegaConf.load(conf_dir / "defense" / f"{name}.yaml")
    shrunk = conf_dir / "defense_debug" / f"{name}_default.yaml"
    if debug and shrunk.is_file():
        node = OmegaConf.merge(node, OmegaConf.load(shrunk))
    node.pop("curve", None)
    return build_target(node, Defense)


def bench_other_defenses(
    model: nn.Module, data: BenchData, w: Workload, seed: int, precision: Precision, compilation: Compilation = EAGER
) -> dict[str, dict[str, Any]]:
    """Seconds of each of OTHER_DEFENSES (defense + its curve), as for RNP and ANP; the smoke-test size
    runs them shrunk as `debug=default` does (said in each figure)."""
    debug = w.size == "tiny"
    return {
        d: {
            **bench_defense(configured_defense(d, debug), model, data, w, seed, precision, compilation)[0],
            "debug": debug,
        }
        for d in OTHER_DEFENSES
    }


def grid_projection(figures: dict[str, Any], w: Workload, triggered: int) -> dict[str, Any]:
    """The paper grid (PROJECTED) priced from this run's figures: recipe epochs of `w.train_images` per model,
    each cell's defense and curve, its before/after evaluation; attack preparation unpriced."""
    grid = grid_of(PROJECTED)
    epochs = int(OmegaConf.load(Path(CONF_DIR) / "train" / "cifar.yaml")["epochs"])
    p = from_perf(grid, figures, epochs, w.train_images, w.test_images + triggered)
    return {
        "experiment": PROJECTED,
        "total_s": round(p.total_s, 1),
        "lower_bound": bool(p.unpriced),
        "models_s": round(p.models_s, 1),
        "cells_s": {d: round(v, 1) for d, v in p.cells_s.items()},
        "unpriced": p.unpriced,
        "assumes": f"{len(grid.attacks) * len(grid.seeds)} models x {epochs} epochs (conf/train/cifar.yaml) x "
        f"{w.train_images} images; {len(grid.defenses)} defenses x {len(grid.attacks) * len(grid.seeds)} cells, "
        f"each evaluated before and after on {w.test_images + triggered} images"
        + ("" if w.size == "full" else f"; size {w.size} is not the paper's network (width {w.width})"),
    }


def bench_reference(model: nn.Module, data: BenchData, w: Workload, rnp: RNP, unlearn_epochs: int) -> dict[str, Any]:
    """The reference-style RNP cell with the epochs ours ran, on the same device, model and data."""
    device = data.test.x.device
    net = copy.deepcopy(model.net)  # the bare network: the reference normalises in its transforms
    with stopwatch(device) as t:
        with stopwatch(device) as t_loaders:
            clean = without_target(data.test, TARGET)
            loaders = make_loaders(data.defense, clean, data.triggered.images, MEAN, STD, w.defense_batch)
        run = run_reference_rnp(
            net, loaders, unlearn_epochs, rnp.recover_epochs, rnp.thresholds(), device, lambda: sync(device)
        )
    return {
        "seconds": round(t["s"], 3),
        "loaders_s": round(t_loaders["s"], 3),
        "setup_s": round(run.setup_s, 3),
        "unlearn_s": round(run.unlearn_s, 3),
        "recover_s": round(run.recover_s, 3),
        "unpruned_eval_s": round(run.unpruned_s, 3),
        "sweep_s": round(run.sweep_s, 3),
        "unlearn_epochs": unlearn_epochs,
        "recover_epochs": rnp.recover_epochs,
        "test_set_passes": run.test_passes,
        # per phase, as the authors' log times them (an epoch with its test evaluation, a threshold with its
        # pruning and evaluation), to set beside that log's seconds:
        "unlearn_epoch_s": [round(v, 3) for v in run.unlearn_epoch_s],
        "recover_epoch_s": [round(v, 3) for v in run.recover_epoch_s],
        "threshold_s": [round(v, 3) for v in run.threshold_s],
        # where an evaluation's time goes (measured after the run, not part of its seconds):
        "sweep_s_per_threshold": round(run.sweep_s / len(rnp.thresholds()), 3),
        "test_loading_s_per_evaluation": round(loading_seconds(loaders), 3),
    }


# Each per-phase figure, and the list of the reference's laps it is the mean of.
REFERENCE_LAPS = {
    "unlearn_s_per_epoch": "unlearn_epoch_s",
    "recover_s_per_epoch": "recover_epoch_s",
    "s_per_threshold": "threshold_s",
}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def phase_comparison(rnp: dict[str, Any], rnp_info: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Seconds per unlearning epoch, recovery epoch and threshold, reference beside ours, and their ratio.

    Ours' epochs are timed by `defenses.rnp` itself (no test evaluation in them, no device sync at their ends);
    ours' threshold is its curve's seconds per point.
    """
    ours = {
        "unlearn_s_per_epoch": rnp_info["unlearn"]["seconds"] / max(rnp["unlearn_epochs"], 1),
        "recover_s_per_epoch": rnp_info["recover"]["seconds"] / max(rnp["recover_epochs"], 1),
        "s_per_threshold": rnp["curve_s"] / max(rnp["curve_points"], 1),
    }
    reference = {key: _mean(ref[laps]) for key, laps in REFERENCE_LAPS.items()}
    out = {}
    for key, o in ours.items():
        r = reference[key]
        ratio = round(r / o, 2) if r is not None and o > 0 else None
        out[key] = {"reference": None if r is None else round(r, 4), "ours": round(o, 4), "ratio": ratio}
    return out


# ---------------------------------------------------------------- report


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": device.type,
        "torch_device": str(device),  # indexed on CUDA (cuda:K): which GPU of the machine was measured
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def all_versions() -> dict[str, Any]:
    return {
        **versions(),
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


TARGETS_FILE = Path(__file__).with_name("targets.yaml")


def targets(device: torch.device, w: Workload, f: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets in targets.yaml that apply to this run's device and size: measured vs wanted."""
    rows = []
    for t in yaml.safe_load(TARGETS_FILE.read_text()):
        if t["device"] not in ("any", device.type) or w.size not in t.get("sizes", [w.size]):
            continue
        v: Any = f
        for key in t["path"].split("."):
            v = v.get(key) if isinstance(v, dict) else None
        met = None if v is None else v >= t["value"] if t["op"] == ">=" else v <= t["value"]
        rows.append({"figure": t["figure"], "measured": v, "target": f"{t['op']} {t['value']:g}", "met": met})
    return rows  # measured None: the run skipped the phase that gives it (--skip)


def summary(result: dict[str, Any]) -> str:
    d, w, f = result["device"], result["workload"], result["figures"]
    rnp, anp = f["rnp"], f["anp"]
    mem = f["peak_memory"]
    lines = [
        f"perf on {d.get('name', d['cpu'])} ({d['type']}, {d['torch_threads']} torch threads, load average "
        f"{d['load_average_at_start'][0]} at start, {result['options']['precision']}); size {w['size']}: "
        f"ResNet-18 width {w['width']}, {w['train_images']} train / {w['test_images']} test / "
        f"{w['defense_images']} defense images",
        f"  training     {f['train']['images_per_s']:>10,.0f} img/s   {f['train']['seconds_per_epoch']:.2f} s/epoch",
        f"  evaluation   {f['eval']['images_per_s']:>10,.0f} img/s   (batch {f['eval']['batch_size']})",
        f"  RNP          {rnp['seconds']:>10.2f} s       defense {rnp['defense_s']:.2f} + curve {rnp['curve_s']:.2f} "
        f"({rnp['unlearn_epochs']} unlearn + {rnp['recover_epochs']} recover epochs, "
        f"{rnp['curve_models_evaluated']}/{rnp['curve_points']} curve models evaluated){_warm(rnp)}",
        f"  ANP          {anp['seconds']:>10.2f} s       defense {anp['defense_s']:.2f} + curve {anp['curve_s']:.2f} "
        f"({anp['iterations']} iterations, {1000 * anp['defense_s_per_iteration']:.1f} ms each){_warm(anp)}",
        *(_reference_lines(f) if "reference_rnp" in f else ["  reference    skipped (--skip reference)"]),
        *(
            ["  others       " + ", ".join(f"{d} {v['seconds']:.2f} s" for d, v in f["defenses"].items())]
            if "defenses" in f
            else ["  others       skipped (--skip defenses), and with them the grid projection"]
        ),
        *(_projection_lines(f["grid_projection"]) if "grid_projection" in f else []),
        f"  peak memory  {mem['cell_peak_mb']:>10,.0f} MB      ({mem['kind']})",
        f"  backdoored model: clean acc {f['model']['clean_acc']:.3f}, ASR {f['model']['asr']:.3f}",
    ]
    verdict = {True: "met", False: "MISSED", None: "not measured: its phase was skipped"}
    lines += [f"  target {t['figure']} {t['target']}: {t['measured']} ({verdict[t['met']]})" for t in result["targets"]]
    for name, p in result.get("profile", {}).items():
        top = ", ".join(f"{r['op']} {100 * r['share']:.0f}%" for r in p["top"][:3])
        lines.append(
            f"  profile {name}: {p['wall_s']:.1f} s wall, {p['ops_s']:.1f} s {p['clock']}, "
            f"{p['outside_torch_ops_s']:.1f} s outside torch ops; top: {top}"
        )
    if "profile" in result:
        lines.append("  (profiled run: its timings include the profiler's overhead)")
    return "\n".join(lines)


def _warm(figures: dict[str, Any]) -> str:
    s = figures.get("compile_warmup_s")
    return "" if s is None else f"; compiling first (untimed above): {s:.1f} s"


def _reference_lines(f: dict[str, Any]) -> list[str]:
    ref = f["reference_rnp"]
    return [
        f"  reference    {ref['seconds']:>10.2f} s       RNP the reference's way, "
        f"{f['ratio_reference_over_ours']:.1f}x ours; a threshold of its sweep {ref['sweep_s_per_threshold']:.2f} s, "
        f"of which {ref['test_loading_s_per_evaluation']:.2f} s is the per-sample test loading alone",
        f"  reference phases: loaders {ref['loaders_s']:.2f} s, setup {ref['setup_s']:.2f} s; per phase "
        "reference / ours (ratio), an epoch with its test evaluation as the authors' log times it:",
        *_phase_lines(f["phases_reference_vs_ours"], ref),
    ]


def _projection_lines(g: dict[str, Any]) -> list[str]:
    bound = " at least" if g["lower_bound"] else ""
    return [
        f"  grid         {g['experiment']} projected at these speeds:{bound} {g['total_s'] / 3600:.2f} h (models "
        f"{g['models_s'] / 60:.1f} min, cells {sum(g['cells_s'].values()) / 60:.1f} min); {g['assumes']}",
        *(f"    unpriced: {u}" for u in g["unpriced"]),
    ]


def _phase_lines(phases: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """One line per phase: the reference's mean, range and count beside ours' mean, and the ratio."""
    laps = {key: ref[name] for key, name in REFERENCE_LAPS.items()}
    lines = []
    for key, p in phases.items():
        if p["reference"] is None:
            lines.append(f"    {key:<20} reference: none ran; ours {p['ours']:.3f} s")
            continue
        lo, hi = min(laps[key]), max(laps[key])
        ratio = "n/a" if p["ratio"] is None else f"{p['ratio']:.1f}x"
        lines.append(
            f"    {key:<20} {p['reference']:>8.3f} s ({lo:.3f}-{hi:.3f} over {len(laps[key])}) / "
            f"{p['ours']:.3f} s ({ratio})"
        )
    return lines


# ---------------------------------------------------------------- entry point


def run(
    w: Workload,
    device: torch.device,
    seed: int = 0,
    compilation: Compilation = EAGER,
    profile: bool = False,
    precision: Precision = AUTO,
    skip: frozenset[str] = frozenset(),
    out: Path | None = None,
) -> dict[str, Any]:
    """Run every phase on `device` (but those in `skip`, from SKIPPABLE) and return the result (the JSON object).

    With `out`, the figures so far are written there after each phase (`"complete": false`), so that a run
    stopped by a time limit still leaves what it measured; the whole result replaces them at the end."""
    info = device_info(device)
    mem, prof = PeakMemory(device), PhaseProfile(device, profile)
    figures: dict[str, Any] = {}
    options = {"compile": compilation.resolved(device), "seed": seed, "precision": precision.resolved(device)}

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        with mem.phase(name), prof.phase(name):
            yield
        if out is not None:
            partial = {"complete": False, "last_phase": name, "device": info, "options": options, "figures": figures}
            atomic_write_json(out, clean_floats(partial))

    started = time.perf_counter()
    data = make_data(w, device, seed)
    model = new_model(w, device)
    with phase("train"):
        figures["train"] = bench_training(model, data, w, compilation, seed, precision)
    with phase("eval"):
        figures["eval"], metrics = bench_eval(model, data, w, compilation, precision)
    rnp = RNP(batch_size=w.defense_batch, unlearn_epochs=w.rnp_unlearn_epochs, recover_epochs=w.rnp_recover_epochs)
    with phase("rnp"):
        warm = dataclasses.replace(rnp, unlearn_epochs=1, recover_epochs=1)  # every batch shape of an epoch
        rnp_figures, rnp_info = bench_defense(rnp, model, data, w, seed, precision, compilation, warm)
        rnp_figures.update(unlearn_epochs=rnp_info["unlearn"]["epochs"], recover_epochs=rnp.recover_epochs)
        figures["rnp"] = rnp_figures
    anp = ANP(batch_size=w.defense_batch, iterations=w.anp_iterations)
    with phase("anp"):
        warm = dataclasses.replace(anp, iterations=math.ceil(w.defense_images / w.defense_batch) + 1)
        anp_figures, _ = bench_defense(anp, model, data, w, seed, precision, compilation, warm)
        per_iteration = round(anp_figures["defense_s"] / anp.iterations, 5)
        anp_figures.update(iterations=anp.iterations, defense_s_per_iteration=per_iteration)
        figures["anp"] = anp_figures
    if "defenses" not in skip:
        with phase("defenses"):
            figures["defenses"] = bench_other_defenses(model, data, w, seed, precision, compilation)
    if "reference" not in skip:
        with phase("reference_rnp"):
            reference = bench_reference(model, data, w, rnp, rnp_figures["unlearn_epochs"])
            figures["reference_rnp"] = reference
            figures["ratio_reference_over_ours"] = round(reference["seconds"] / rnp_figures["seconds"], 2)
            figures["phases_reference_vs_ours"] = phase_comparison(rnp_figures, rnp_info, reference)
    figures["peak_memory"] = mem.summary(("train", "eval", "rnp", "anp", "defenses"))
    figures["model"] = {k: round(v, 4) for k, v in metrics.as_dict().items()}
    if "defenses" in figures:  # the projection prices every defense of the grid
        figures["grid_projection"] = grid_projection(figures, w, len(data.triggered.images))
    result = {
        "schema": SCHEMA,
        "benchmark": "perf",
        "complete": True,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {**info, "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "workload": {
            **dataclasses.asdict(w),
            "arch": "resnet18",
            "data": "synthetic CIFAR-shaped uint8 (class prototypes + noise), BadNets 3x3 patch, 10% poisoned",
            "ours": "uint8 data on the device, batched augmentation, large eval batches under inference mode, "
            f"{'bf16 autocast' if precision.resolved(device) == 'bf16' else 'fp32'}, channels_last"
            + (f", torch.compile ({compilation.resolved(device)})" if compilation.enabled else ""),
            "reference": f"per-sample Datasets + torchvision transforms (defense: PIL crop + flip; test: numpy "
            f"ToTensor + Normalize), DataLoaders (main process) of batch {w.defense_batch} (defense) / "
            f"{REFERENCE_TEST_BATCH} (test), fp32 NCHW, clean + poisoned test evaluation (both without the "
            "target class) after every unlearning and recovery epoch, of the unpruned model, and per threshold",
            "rnp_seconds_cover": "defense (unlearn + recover + pruning) + evaluation of every curve point",
        },
        "options": {**options, "profile": profile, "skip": sorted(skip)},
        "figures": figures,
        "versions": all_versions(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if profile:
        result["profile"] = prof.phases
    result["targets"] = targets(device, w, figures)
    return clean_floats(result)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m studies.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--size", choices=sorted(SIZES), help="workload (default: full on CUDA, cpu-reduced on CPU)")
    parser.add_argument("--out", type=Path, help="also write the JSON here (atomically)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile",
        nargs="?",
        const="reduce-overhead",
        default="eager",
        choices=COMPILE_MODES,
        help="torch.compile training, evaluation and RNP's and ANP's loops as the harness's `compile` does "
        "(bare --compile: reduce-overhead, CUDA graphs on a GPU; default: eager)",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="as the harness's `precision` (default: auto)"
    )
    parser.add_argument("--profile", action="store_true", help="add the top operators of each phase (slower)")
    parser.add_argument(
        "--skip",
        default="",
        help=f"comma-separated phases left out, from {', '.join(SKIPPABLE)}: the other defenses (and with them the "
        "grid projection), the reference re-creation (and the ratio); e.g. a second, compiled run",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads={args.threads} is invalid: expected an integer >= 1")
        device = setup_runtime(args.seed, args.device, args.threads, args.precision)
        size = args.size or ("full" if device.type == "cuda" else "cpu-reduced")
        print(f"perf: measuring the {size} workload on {device}", file=sys.stderr, flush=True)
        compilation, precision = Compilation(args.compile), Precision(args.precision)
        skip = frozenset(s for s in args.skip.split(",") if s)
        if skip - set(SKIPPABLE):
            raise ConfigError(f"--skip={args.skip!r} is invalid: name phases from {', '.join(SKIPPABLE)}")
        result = run(SIZES[size], device, args.seed, compilation, args.profile, precision, skip, args.out)
    except BenchmarkError as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        done = args.out is not None and args.out.is_file()
        kept = f"{args.out} holds the phases it finished" if done else "no phase finished, nothing was written"
        stop_interrupted(f"the perf benchmark did not finish; {kept}", "Rerun it to measure again.")
    if args.out is not None:
        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    print(summary(result), file=sys.stderr)
    return result
