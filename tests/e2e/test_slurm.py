"""The slurm launcher (hydra-submitit-launcher) on a real single-node SLURM cluster (tests/helpers/slurm_cluster.py).

Slow tests: `bash .ci/install-slurm` once (as root), then `python -m pytest -m slow -k slurm`. They skip, saying
why, only where the cluster cannot be started (not root, SLURM or MariaDB not installed). Only the command line
and the files it writes are used, never the harness's modules, so these tests hold whatever the package layout.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmark.weights.checkpoint import read_checkpoint
from tests.helpers.slurm_cluster import ClusterUnavailable, SlurmCluster

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PARTITION = "debug"  # the partition SlurmCluster creates
# The README's CPU-cluster example, run verbatim by test_slurm_sweep_runs_each_cell_as_an_array_task (plus a
# temp sweep dir); test_slurm_readme_shows_the_tested_command keeps the README in step with it.
README_COMMAND = (
    "python -m benchmark -m hydra/launcher=slurm hydra.launcher.partition=debug hydra.launcher.gpus_per_node=0"
    " hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=2 hydra.launcher.timeout_min=10"
    " experiment=quickstart defense=none,rnp device=cpu threads=1 train.epochs=1 dataset.train_limit=300"
    " dataset.test_limit=200 arch.kwargs.width=4 defense_data.size=100"
)
ARGS = shlex.split(README_COMMAND)[3:]  # after "python -m benchmark"
LAUNCHER = [a for a in ARGS if a.startswith("hydra")]
TINY = [a for a in ARGS if not a.startswith(("hydra", "defense=", "-m"))]


def cell_dir(sweep: Path, defense: str) -> Path:
    return sweep / "embedded" / "convnet" / "badnets" / defense / "seed0"


def with_options(args: list[str], *options: str) -> list[str]:
    """`args` with each option replacing the one of the same key (Hydra rejects a key given twice)."""
    keys = tuple(o.split("=")[0] + "=" for o in options)
    return [a for a in args if not a.startswith(keys)] + list(options)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One cluster for the session; a skip (with the reason) only where it cannot be started.

    With BENCHMARK_SLURM_REQUIRED=1 (CI, after .ci/install-slurm) that is a failure instead, so that a
    cluster which stopped starting cannot pass as skipped tests.
    """
    cluster = SlurmCluster(partition=PARTITION)
    try:
        cluster.start()
    except ClusterUnavailable as err:
        if os.environ.get("BENCHMARK_SLURM_REQUIRED") == "1":
            pytest.fail(f"BENCHMARK_SLURM_REQUIRED=1 but: {err}")
        pytest.skip(str(err))
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)  # its MariaDB alone is ~100 MB; failures quote the logs


def cli_env(cluster: SlurmCluster, home: Path) -> dict[str, str]:
    """A private home and model cache; PYTHONPATH makes the jobs import this checkout's package."""
    env = cluster.env()
    env.pop("WANDB_API_KEY", None)
    env.update(
        HOME=str(home), BENCHMARK_HOME=str(home / "bench"), WANDB_MODE="disabled", MPLCONFIGDIR=str(home / "mpl"),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )  # fmt: skip
    return env


def run_sweep(cluster: SlurmCluster, home: Path, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args], cwd=home, env=cli_env(cluster, home),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def task_logs(sweep: Path) -> dict[str, str]:
    """submitit's stdout+stderr per array task ("<array job id>_<task>"), from <sweep>/.submitit/."""
    logs: dict[str, str] = {}
    for d in sorted((sweep / ".submitit").iterdir()):
        if re.fullmatch(r"\d+_\d+", d.name):
            logs[d.name] = "".join(p.read_text(errors="replace") for p in sorted(d.glob("*_log.*")))
    return logs


def task_of(logs: dict[str, str], defense: str) -> str:
    """The array task that ran `defense` (the cell's first log line names it)."""
    ids = [t for t, text in logs.items() if f"defense={defense}, seed=0" in text]
    assert len(ids) == 1, (defense, {t: text[-1500:] for t, text in logs.items()})
    return ids[0]


def sacct(cluster: SlurmCluster, job: str, timeout: float = 60) -> dict[str, dict[str, str]]:
    """SLURM's own record of an array job's tasks once all have ended: task id -> State, Start, End.

    Waits (bounded): the launcher returns as soon as each task's result file exists, a moment before
    SLURM marks the task COMPLETED.
    """
    deadline = time.monotonic() + timeout
    while True:
        out = cluster.run("sacct", "-j", job, "-X", "--parsable2", "--noheader", "-o", "JobID,State,Start,End")
        tasks = {r[0]: {"State": r[1], "Start": r[2], "End": r[3]} for r in (x.split("|") for x in out.splitlines())}
        running = [t for t, v in tasks.items() if v["State"] in ("PENDING", "RUNNING", "COMPLETING")]
        if (tasks and not running) or time.monotonic() > deadline:
            return tasks
        time.sleep(0.5)


def fail_text(proc: subprocess.CompletedProcess | None, sweep: Path) -> str:
    """What to show when a sweep went wrong: its output and every task's log."""
    text = "" if proc is None else f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
    if (sweep / ".submitit").exists():
        text += "\n".join(f"--- {t}:\n{log[-2000:]}" for t, log in task_logs(sweep).items())
    return text


def test_slurm_sweep_runs_each_cell_as_an_array_task(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    proc = run_sweep(slurm_cluster, tmp_path, with_options(ARGS, f"hydra.sweep.dir={sweep}"))
    assert proc.returncode == 0, fail_text(proc, sweep)
    for defense in ("none", "rnp"):
        result = json.loads((cell_dir(sweep, defense) / "result.json").read_text())
        assert result["cell"] == {"attack": "badnets", "dataset": "embedded", "arch": "convnet", "defense": defense,
                                  "seed": 0}  # fmt: skip
    # each cell ran as a task of one SLURM job array, which SLURM itself records as completed
    logs = task_logs(sweep)
    tasks = {d: task_of(logs, d) for d in ("none", "rnp")}
    assert {t.split("_")[0] for t in tasks.values()} == {next(iter(tasks.values())).split("_")[0]}
    assert sorted(t.split("_")[1] for t in tasks.values()) == ["0", "1"]
    for task in tasks.values():
        assert f"Starting with JobEnvironment(job_id={task}," in logs[task]
    states = sacct(slurm_cluster, next(iter(tasks.values())).split("_")[0])
    assert {t: states[t]["State"] for t in tasks.values()} == dict.fromkeys(tasks.values(), "COMPLETED"), states
    # the report written after the sweep lists both cells
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert sorted((r["defense"], r["status"]) for r in rows) == [("none", "ok"), ("rnp", "ok")]
    md = (sweep / "results.md").read_text()
    assert "2 cells" in md and "| attack | no defense | rnp |" in md and "| badnets |" in md


def test_slurm_cancelled_task_leaves_no_result_and_rerun_resumes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """scancel during backdoor training: no result.json, a loadable cache; the rerun runs only that cell.

    One task at a time (array_parallelism=1) and a backdoor training of ~10 s on all 11,000 images: task 0
    (defense=none) is cancelled once its log says it is training, so the cancel lands mid-run, not by chance.
    Task 1 (rnp) then trains the model itself (the killed task's lock is released with its process).
    """
    sweep = tmp_path / "grid"
    args = with_options(
        ARGS,
        "hydra.launcher.array_parallelism=1",
        "dataset.train_limit=null",
        "train.epochs=8",
        f"hydra.sweep.dir={sweep}",
    )
    first = subprocess.Popen(
        [sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=cli_env(slurm_cluster, tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    cancelled = None
    try:
        deadline = time.monotonic() + 120
        while cancelled is None and time.monotonic() < deadline and first.poll() is None:
            if (sweep / ".submitit").exists():
                for task, log in task_logs(sweep).items():
                    if "defense=none, seed=0" in log and "model: not cached, training it" in log:
                        slurm_cluster.run("scancel", task)
                        cancelled = task
            time.sleep(0.2)
        assert cancelled is not None, f"task 0 never started training within 120 s\n{fail_text(None, sweep)}"
        out, _ = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # submitit sees the cancelled task through sacct: the sweep ends (non-zero) instead of waiting forever
    assert first.returncode != 0, out[-3000:]
    job = cancelled.split("_")[0]
    states = sacct(slurm_cluster, job)
    assert states[cancelled]["State"].startswith("CANCELLED"), states
    assert states[f"{job}_1"]["State"] == "COMPLETED", (states, fail_text(None, sweep))
    assert not (cell_dir(sweep, "none") / "result.json").exists()
    finished = cell_dir(sweep, "rnp") / "result.json"
    assert json.loads(finished.read_text())["model_source"] == "trained"
    # the cache holds one model, complete (atomic writes: a killed writer leaves at most a temp file)
    models = sorted((tmp_path / "bench" / "models").glob("*.safetensors"))
    assert len(models) == 1
    for entry in models:
        assert "state_dict" in read_checkpoint(entry)
        assert entry.with_suffix(".json").exists()
    before = (finished.stat().st_mtime_ns, finished.read_bytes())

    # the same command again: the finished cell is skipped, the cancelled one runs (from the cached model)
    proc = run_sweep(slurm_cluster, tmp_path, args)
    assert proc.returncode == 0, fail_text(proc, sweep)
    assert (finished.stat().st_mtime_ns, finished.read_bytes()) == before
    assert json.loads((cell_dir(sweep, "none") / "result.json").read_text())["model_source"] == "cache"
    logs = {t: log for t, log in task_logs(sweep).items() if not t.startswith(f"{job}_")}
    rerun_none = task_of(logs, "none")
    skipped = [t for t, log in logs.items() if "resume: skipping" in log]
    assert len(skipped) == 1 and f"{cell_dir(sweep, 'rnp')}" in logs[skipped[0]], logs
    assert "resume: skipping" not in logs[rerun_none] and "model: loaded from cache" in logs[rerun_none]
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert sorted((r["defense"], r["status"]) for r in rows) == [("none", "ok"), ("rnp", "ok")]


def test_slurm_parallel_tasks_train_a_shared_model_once(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Two tasks running at once need the same backdoored model: the cache's file lock holds across jobs.

    Backdoor training is made a few seconds long, so the second task asks for the model while the first
    still trains it (checked from the log timestamps), and must wait for it rather than train its own.
    """
    sweep = tmp_path / "grid"
    args = with_options(
        ARGS, "defense=none,clp", "hydra.launcher.array_parallelism=2", "dataset.train_limit=5000", "train.epochs=4",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    proc = run_sweep(slurm_cluster, tmp_path, args)
    assert proc.returncode == 0, fail_text(proc, sweep)
    results = {d: json.loads((cell_dir(sweep, d) / "result.json").read_text()) for d in ("none", "clp")}
    assert sorted(r["model_source"] for r in results.values()) == ["cache", "trained"]
    assert results["none"]["model_sha256"] == results["clp"]["model_sha256"]
    logs = task_logs(sweep)
    by_source = {r["model_source"]: logs[task_of(logs, d)] for d, r in results.items()}
    # the waiting task asked for the model (before taking the lock) before the trainer had finished
    asked = log_time(by_source["cache"], "using the model cache, else training")
    trained = log_time(by_source["trained"], "before: clean acc")
    assert asked < trained, (asked, trained)
    job = task_of(logs, "none").split("_")[0]
    spans = [(s["Start"], s["End"]) for s in sacct(slurm_cluster, job).values()]
    assert len(spans) == 2 and spans[0][0] <= spans[1][1] and spans[1][0] <= spans[0][1], spans


def log_time(log: str, needle: str) -> str:
    """The timestamp ("YYYY-mm-dd HH:MM:SS,mmm", sortable) of the first log line containing `needle`."""
    for line in log.splitlines():
        if needle in line:
            return line[1:24]
    raise AssertionError(f"{needle!r} not in log:\n{log[-2000:]}")


def test_slurm_readme_shows_the_tested_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert README_COMMAND in readme
    assert "bash .ci/install-slurm" in readme and "python -m pytest -m slow -k slurm" in readme
