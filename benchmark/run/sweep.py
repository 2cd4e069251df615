"""One cell of a sweep (`python -m benchmark -m ...`): resume, failure record, one GPU per parallel job.

A sweep directory is a small results store keyed by cell, `<sweep>/<dataset>/<arch>/<attack>/<defense>/seed<N>/`
(other swept settings lead the path: benchmark.run.grid):
- resume: a cell whose `result.json` is complete (schema-valid) and was made from the same config is
  skipped, so rerunning a sweep runs only what is missing, failed, was killed, or changed;
- a cell that fails writes `failed.json` (error and traceback) instead of stopping the sweep; the report
  lists it and the sweep exits non-zero at the end (benchmark.report.ReportCallback);
- a cell being run by another sweep into the same directory (its lock in `<sweep>/.locks/` is held) is
  skipped with a log line, not run twice: a rerun of the sweep afterwards resumes it from that result;
- devices: with `device=auto` or `device=cuda` and several visible GPUs, each job claims one GPU for its
  run (a lock file per GPU in `<sweep>/.locks/`, job k trying GPU k mod count first), so parallel jobs
  (joblib launcher, `n_jobs` = GPU count) never share one; with one visible GPU (a single-GPU machine,
  or a SLURM task, which sees its own GPUs as cuda:0..) the job runs on cuda:0 without a lock; `cuda:N`
  stays pinned to GPU N. Either way the name resolves to an indexed `cuda:K` (benchmark.run.runtime),
  which becomes the job's current CUDA device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from benchmark.core.errors import BenchmarkError, stop_interrupted
from benchmark.core.io import atomic_write_json
from benchmark.run.config import RunConfig, build_run_config
from benchmark.run.key import CELL_FIELDS, partial_cell
from benchmark.run.record import SCHEMA, clean_floats, config_changes, result_problems, versions
from benchmark.run.runtime import start_runtime
from benchmark.run.streams import STREAMS_VERSION

log = logging.getLogger("benchmark")

RESULT, FAILED, STALE = "result.json", "failed.json", "result.stale.json"


def resume_check(run_dir: Path, config: dict[str, Any]) -> tuple[bool, str]:
    """(True, why) when `run_dir` holds a finished result of this very config; else (False, why not)."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return False, "no result.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        return False, f"result.json is unreadable ({str(exc)[:200]})"
    problems = result_problems(result)
    if problems:
        return False, "result.json is incomplete or altered: " + "; ".join(problems[:3])
    streams = result.get("random_streams", 1)  # results from before the field drew from version 1
    if streams != STREAMS_VERSION:
        return False, f"it was drawn from random streams v{streams}, this harness draws v{STREAMS_VERSION}"
    changed = config_changes(result["config"], config)
    if changed:
        more = f" (+{len(changed) - 5} more)" if len(changed) > 5 else ""
        return False, "the config changed: " + ", ".join(changed[:5]) + more
    if "digest" not in result:
        return True, "result.json matches the config but has no digest (older, or its digest removed): not verified"
    return True, "result.json is complete and matches the config"


def set_aside(run_dir: Path) -> None:
    """Before a (re)run: keep an outdated result as result.stale.json and drop an old failure record."""
    run_dir = Path(run_dir)
    if (run_dir / RESULT).exists():
        os.replace(run_dir / RESULT, run_dir / STALE)
    (run_dir / FAILED).unlink(missing_ok=True)


def cell_of(cfg: DictConfig) -> dict[str, Any]:
    """The cell's coordinates, read leniently (the config may be the reason the cell failed)."""

    def read(path: str) -> Any:
        return OmegaConf.select(cfg, path, default=None, throw_on_resolution_failure=False)

    return partial_cell({k: read(k if k == "seed" else f"{k}.name") for k in CELL_FIELDS})


def record_failure(run_dir: Path, cfg: DictConfig, exc: BaseException, seconds: float) -> Path:
    """failed.json: the cell, the error and its traceback, so the report can list it and a rerun retries it."""
    try:
        config: Any = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an unresolvable config is a possible cause of the failure itself
        config = OmegaConf.to_container(cfg, resolve=False)
    path = Path(run_dir) / FAILED
    atomic_write_json(
        path,
        clean_floats(
            {
                "schema": SCHEMA,
                "status": "failed",
                "cell": cell_of(cfg),
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(exc)),
                "timing_s": {"total": round(seconds, 3)},
                "config": config,
                "versions": versions(),
            }
        ),
    )
    return path


def _lock_tag() -> str:
    """This machine and its visible-GPU set: GPU index k means the same device only within one tag."""
    tag = f"{socket.gethostname()}-{os.environ.get('CUDA_VISIBLE_DEVICES', 'all')}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tag)


SHARED_DEVICES = ("auto", "cuda")  # names that leave the GPU open: a sweep job may claim any visible one


@contextlib.contextmanager
def claimed_device(name: str, job_num: int, lock_dir: Path, poll_s: float = 5.0) -> Iterator[str]:
    """The device name for a job: with `auto` or `cuda` and several visible GPUs, a GPU this job holds alone.

    Job k tries GPU k mod count first, then the others; when all are held it waits. One GPU or none, or a
    pinned `cuda:N`/`cpu`: `name` unchanged, for `select_device` to resolve (a SLURM job sees only its own
    GPUs, so it needs no lock).
    """
    shared = name in SHARED_DEVICES and torch.cuda.is_available()
    count = torch.cuda.device_count() if shared else 0
    if count < 2:
        yield name
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    order = [(job_num + i) % count for i in range(count)]
    locks = {k: FileLock(str(lock_dir / f"{_lock_tag()}-cuda{k}.lock")) for k in order}
    waited = False
    while True:
        for k in order:
            try:
                locks[k].acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield f"cuda:{k}"
            finally:
                locks[k].release()
            return
        if not waited:
            log.info("all %d GPUs are held by other jobs of this sweep: waiting for one", count)
            waited = True
        time.sleep(poll_s)


def with_wandb_group(rc: RunConfig, sweep_dir: Path) -> RunConfig:
    """wandb runs of one sweep share a group named after the sweep directory (unless logger.group is set)."""
    if rc.logger.kind != "wandb" or rc.logger.group:
        return rc
    group = Path(sweep_dir).name
    resolved = {**rc.resolved, "logger": {**rc.resolved.get("logger", {}), "group": group}}
    return dataclasses.replace(rc, logger=dataclasses.replace(rc.logger, group=group), resolved=resolved)


def _rel(run_dir: Path, sweep_dir: Path) -> str:
    try:
        return Path(run_dir).resolve().relative_to(Path(sweep_dir).resolve()).as_posix()
    except ValueError:  # a run dir outside the sweep dir (a custom hydra.sweep.subdir)
        return Path(run_dir).resolve().as_posix()


def cells_running(sweep_dir: Path) -> list[str]:
    """The cells of `sweep_dir` whose lock a live process holds now (another sweep is running them)."""
    running = []
    for note in sorted((Path(sweep_dir) / ".locks").glob("cell-*.json")):
        lock = FileLock(str(note.with_suffix(".lock")))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                running.append(str(json.loads(note.read_text()).get("path")))
        else:
            lock.release()
    return running


def cell_lock(run_dir: Path, sweep_dir: Path) -> FileLock:
    """The lock a sweep holds on one cell while it checks, runs and records it (`<sweep>/.locks/cell-...lock`)."""
    rel = _rel(run_dir, sweep_dir)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", rel.replace("/", "__"))
    lock_dir = Path(sweep_dir) / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_dir / f"cell-{name}.lock"))


def run_sweep_cell(cfg: DictConfig, run_dir: Path, job_num: int, sweep_dir: Path) -> str:
    """Run one cell of a sweep; returns "skipped", "running" (elsewhere), "done" or "failed" (failures never raise).

    A cell that another sweep is running is skipped rather than waited for: waiting would hold this job's
    launcher slot (and GPU) idle for as long as that cell takes, and a rerun picks its result up anyway.
    Ctrl-C stops the sweep with one line and exit code 130; a rerun resumes it.
    """
    lock = cell_lock(run_dir, sweep_dir)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning(
            "sweep: skipping %s: another sweep is running this cell now (%s is held); this sweep's report leaves "
            "it out: rerun the sweep after that one finishes to include it",
            run_dir,
            lock.lock_file,
        )
        return "running"
    try:
        with contextlib.suppress(OSError):  # who holds the lock, for a report made meanwhile (cells_running)
            atomic_write_json(Path(lock.lock_file).with_suffix(".json"), {"path": _rel(run_dir, sweep_dir)})
        return _run_locked_cell(cfg, run_dir, job_num, sweep_dir)
    except KeyboardInterrupt:
        stop_interrupted(
            f"the sweep in {sweep_dir} stopped in cell {run_dir}, which was not recorded",
            "Finished cells are kept: rerun the same command to resume (it skips them).",
        )
    finally:
        lock.release()


def _run_locked_cell(cfg: DictConfig, run_dir: Path, job_num: int, sweep_dir: Path) -> str:
    start = time.perf_counter()
    try:
        rc = build_run_config(cfg)  # typed and checked once, here at the job's door
        if rc.resume:
            done, why = resume_check(run_dir, rc.resolved)
            if done:
                (log.warning if "not verified" in why else log.info)("resume: skipping %s: %s", run_dir, why)
                return "skipped"
            if (run_dir / RESULT).exists():
                log.warning("resume: rerunning %s: %s", run_dir, why)
        set_aside(run_dir)
        rc = with_wandb_group(rc, sweep_dir)
        from benchmark.run.cell import run_cell  # imported here: a skipped cell needs none of it (saves seconds)

        with claimed_device(rc.device, job_num, Path(sweep_dir) / ".locks") as device_name:
            run_cell(rc, run_dir, start_runtime(rc, device_name))  # which also makes it the current GPU
        return "done"
    except Exception as exc:  # one broken cell must not cost the others their results
        if isinstance(exc, BenchmarkError):
            log.error("cell failed: %s", exc)
        else:
            log.exception("cell failed")
        if (run_dir / RESULT).exists():  # written before the failure (e.g. in logging): not a finished cell
            os.replace(run_dir / RESULT, run_dir / STALE)
        try:
            path = record_failure(run_dir, cfg, exc, time.perf_counter() - start)
        except OSError as again:  # a full disk that failed the cell fails its failed.json too: say so, go on
            log.error("cell %s not recorded (failed.json could not be written: %s); the sweep goes on", run_dir, again)
            return "failed"
        log.error("wrote %s; the sweep goes on", path)
        return "failed"
