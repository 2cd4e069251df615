"""Sweeps end to end: a 2 attacks x 2 defenses x 2 seeds grid, resume, killed cells, failures, wandb, launchers."""

from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
import time
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from benchmark.report.write import ReportCallback, write_report
from benchmark.run.grid import missing_options, spelt_in, swept_settings
from benchmark.run.streams import STREAMS_VERSION
from benchmark.run.sweep import claimed_device, config_changes, resume_check, run_sweep_cell
from tests.conftest import CONF, FAST, TINY, compose_cfg, group_options, option_file, through_cache
from tests.helpers.cli import run_cli

GRID = ["attack=badnets,blend", "defense=none,clp", "seed=0,1"]
CELLS = [(a, d, s) for a in ("badnets", "blend") for d in ("none", "clp") for s in (0, 1)]


def cell_dir(sweep: Path, attack: str, defense: str, seed: int) -> Path:
    return sweep / "embedded" / "convnet" / attack / defense / f"seed{seed}"


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(home, sweep dir) after one run of the grid; tests that change the sweep work on a copy."""
    home = tmp_path_factory.mktemp("sweep_home")
    sweep = home / "grid"
    proc = run_cli(["-m", *TINY, *GRID, f"hydra.sweep.dir={sweep}"], home, MPLCONFIGDIR=str(home / "mpl"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home, sweep


def test_grid_writes_every_cell_trains_each_model_once_and_reports(grid) -> None:
    _, sweep = grid
    results = {c: json.loads((cell_dir(sweep, *c) / "result.json").read_text()) for c in CELLS}
    assert all(
        r["cell"]["attack"] == a and r["cell"]["defense"] == d and r["cell"]["seed"] == s
        for (a, d, s), r in results.items()
    )
    # one backdoored model per (attack, seed), trained by the first defense cell, loaded by the second
    for a in ("badnets", "blend"):
        for s in (0, 1):
            sources = sorted(results[(a, d, s)]["model_source"] for d in ("none", "clp"))
            assert sources == ["cache", "trained"]
            assert results[(a, "none", s)]["model_sha256"] == results[(a, "clp", s)]["model_sha256"]
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    assert {"seconds_model", "seconds_defense", "seconds_total"} <= set(rows[0])
    md = (sweep / "results.md").read_text()
    assert "| badnets |" in md and "| blend |" in md and "| attack | no defense | clp |" in md
    assert (sweep / "plots" / "clean_vs_asr_embedded_convnet.png").stat().st_size > 1000


def test_rerun_skips_finished_cells_and_reruns_killed_ones_with_wandb_groups(grid, tmp_path: Path) -> None:
    home, original = grid
    sweep = tmp_path / "grid-again"
    shutil.copytree(original, sweep)
    # a cell killed midway: atomic writes leave no result.json, at most a temp file (a torn or otherwise
    # invalid result.json also reruns: test_resume_check_names_why_a_cell_reruns)
    killed = cell_dir(sweep, "badnets", "clp", 1)
    (killed / "result.json").unlink()
    (killed / ".result.json.x1y2.tmp").write_text('{"schema": 1, "ce')
    kept = [c for c in CELLS if c != ("badnets", "clp", 1)]
    before = {c: (cell_dir(sweep, *c) / "result.json").stat().st_mtime_ns for c in kept}

    proc = run_cli(
        ["-m", *TINY, *GRID, "logger=wandb", f"hydra.sweep.dir={sweep}"],
        home,
        WANDB_MODE=None,
        MPLCONFIGDIR=str(home / "mpl"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("resume: skipping") == 7
    assert "not cached, training it" not in out  # nothing retrained
    assert {c: (cell_dir(sweep, *c) / "result.json").stat().st_mtime_ns for c in kept} == before
    assert json.loads((killed / "result.json").read_text())["model_source"] == "cache"
    # the rerun cell is a wandb run (offline: no API key) in the group named after the sweep dir
    runs = list((killed / "wandb").glob("offline-run-*/*.wandb"))
    assert len(runs) == 1 and wandb_field(runs[0], run_group="grid-again", job_type="clp")
    assert not list(cell_dir(sweep, "badnets", "none", 0).glob("wandb"))  # skipped cells log nothing
    # the report's aggregate run: same group, job_type report, the grid as tables and the plots as images
    (report_run,) = (sweep / "wandb").glob("offline-run-*")
    assert wandb_field(next(report_run.glob("*.wandb")), run_group="grid-again", job_type="report")
    assert list(report_run.glob("files/media/table/cells_*.table.json"))
    assert list(report_run.glob("files/media/images/plots/*.png"))


def wandb_field(path: Path, **fields: str) -> bool:
    """True when the offline run file holds these RunRecord fields (matched as encoded protobuf fields)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    return all(pb.RunRecord(**{k: v}).SerializeToString() in data for k, v in fields.items())


def test_failed_cell_writes_failed_json_and_the_report_lists_it(tmp_path: Path, tmp_home) -> None:
    cfg = compose_cfg([*FAST, "defense_data.size=99999"])  # valid YAML, rejected when the cell starts
    run_dir = tmp_path / "sweep" / "embedded" / "convnet" / "badnets" / "rnp" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text("{}")  # an outdated result: set aside, never mixed with the failure
    assert run_sweep_cell(cfg, run_dir, 0, tmp_path / "sweep") == "failed"
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["status"] == "failed" and "defense_data.size=99999 is out of range" in failed["error"]
    assert failed["cell"] == {
        "attack": "badnets",
        "dataset": "embedded",
        "arch": "convnet",
        "defense": "rnp",
        "seed": 0,
    }
    assert not (run_dir / "result.json").exists() and (run_dir / "result.stale.json").exists()
    report = write_report(tmp_path / "sweep", plots=False)
    assert [c.row["status"] for c in report.cells] == ["failed"]
    assert "defense_data.size=99999 is out of range" in (tmp_path / "sweep" / "results.md").read_text()
    # the multirun's end: the report is written, then the process exits 1 (unless told not to)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}, "logger": {"kind": "none"}})
    with pytest.raises(SystemExit) as exit_:
        ReportCallback().on_multirun_end(config)
    assert exit_.value.code == 1
    ReportCallback(fail_on_error=False).on_multirun_end(config)


def test_resume_compares_the_config_but_ignores_paths_threads_and_logger() -> None:
    stored = {
        "seed": 0,
        "train": {"epochs": 1, "lr": 0.05},
        "paths": {"root": "/a"},
        "threads": 1,
        "logger": {"kind": "none"},
        "model": {"source": "auto", "zoo_dir": "/a/zoo"},
    }
    moved = {
        **stored,
        "paths": {"root": "/b"},
        "threads": 4,
        "logger": {"kind": "wandb"},
        "model": {"source": "auto", "zoo_dir": "/b/zoo"},
    }
    assert config_changes(stored, moved) == []
    longer = {**stored, "train": {"epochs": 2, "lr": 0.05}, "model": {"source": "train"}}
    assert config_changes(stored, longer) == ["model.source", "train.epochs"]
    # a setting added to the config since the cell ran is not a change; a setting gone is
    grown = {**stored, "train": {"epochs": 1, "lr": 0.05, "eval_every": 0}}
    assert config_changes(stored, grown) == []
    assert config_changes(grown, stored) == ["train.eval_every"]


def test_resume_check_names_why_a_cell_reruns(tmp_path: Path) -> None:
    config = {"seed": 0, "train": {"epochs": 1}}
    assert resume_check(tmp_path, config) == (False, "no result.json")
    (tmp_path / "result.json").write_text('{"schema": 1, "cell": {')
    assert "unreadable" in resume_check(tmp_path, config)[1]
    metrics = {"clean_acc": 0.9, "asr": 0.1, "robust_acc": 0.8}
    result = {
        "schema": 1,
        "cell": {"attack": "a", "dataset": "d", "arch": "r", "defense": "x", "seed": 0},
        "model_source": "cache",
        "before": metrics,
        "after": {**metrics, "asr": 1.5},
        "der": 0.5,
        "defense_info": {},
        "timing_s": {"total": 1.0},
        "config": config,
        "random_streams": STREAMS_VERSION,
    }
    (tmp_path / "result.json").write_text(json.dumps(result))
    assert "after.asr=1.5 is not a fraction" in resume_check(tmp_path, config)[1]
    (tmp_path / "result.json").write_text(json.dumps({**result, "after": metrics}))
    assert resume_check(tmp_path, config)[0]
    assert resume_check(tmp_path, {"seed": 0, "train": {"epochs": 3}}) == (False, "the config changed: train.epochs")
    older = {k: v for k, v in result.items() if k != "random_streams"}  # a result from before the streams changed
    (tmp_path / "result.json").write_text(json.dumps({**older, "after": metrics}))
    assert resume_check(tmp_path, config) == (False, "it was drawn from random streams v1, this harness draws v2")


def _train_once(path: str, log: str, out: str) -> None:
    """A job wanting the model at `path`: trains (slowly, noting it in `log`) unless another job did."""

    def train(model: nn.Module):
        with open(log, "a") as f:
            f.write("trained\n")
        time.sleep(0.5)
        nn.init.constant_(model.weight, 3.0)
        return {}, {}

    model, source, _, _ = through_cache(Path(path), nn.Linear(2, 2), train, {})
    Path(out).write_text(f"{source} {model.weight.sum().item()}")


def test_parallel_jobs_train_a_shared_model_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    jobs = [
        ctx.Process(
            target=_train_once, args=(str(tmp_path / "m.safetensors"), str(tmp_path / "log"), str(tmp_path / f"out{i}"))
        )
        for i in range(3)
    ]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(30)
    assert [j.exitcode for j in jobs] == [0, 0, 0]
    assert (tmp_path / "log").read_text() == "trained\n"
    outs = sorted((tmp_path / f"out{i}").read_text() for i in range(3))
    assert outs == ["cache 12.0", "cache 12.0", "trained 12.0"]


def test_parallel_jobs_each_hold_their_own_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with claimed_device("auto", 0, tmp_path) as first, claimed_device("auto", 0, tmp_path) as second:
        assert (first, second) == ("cuda:0", "cuda:1")  # job 0's GPU is held: the next job takes the other
    with claimed_device("auto", 3, tmp_path) as odd:
        assert odd == "cuda:1"  # free again; job 3 starts from GPU 3 mod 2
    with claimed_device("cpu", 0, tmp_path) as cpu:
        assert cpu == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with claimed_device("auto", 5, tmp_path) as single:
        assert single == "auto"  # one GPU (e.g. a SLURM task's own): nothing to share


def test_a_swept_setting_gets_its_own_directory_level_and_resumes(tmp_path: Path) -> None:
    """A grid over a setting that is not a cell coordinate: one directory per value, not one overwritten cell."""
    sweep = tmp_path / "rates"
    args = ["-m", *TINY, "attack=badnets", "defense=none", "attack.poison_rate=0.05,0.2", f"hydra.sweep.dir={sweep}"]
    proc = run_cli(args, tmp_path, MPLCONFIGDIR=str(tmp_path / "mpl"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    paths = {
        r: sweep / f"attack.poison_rate={r}" / "embedded/convnet/badnets/none/seed0/result.json"
        for r in ("0.05", "0.2")
    }
    for rate, path in paths.items():
        assert json.loads(path.read_text())["config"]["attack"]["poison_rate"] == float(rate)
    assert not list(sweep.rglob("result.stale.json"))
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert sorted(r["setting"] for r in rows) == ["attack.poison_rate=0.05", "attack.poison_rate=0.2"]
    before = {r: p.stat().st_mtime_ns for r, p in paths.items()}
    proc = run_cli(args, tmp_path, MPLCONFIGDIR=str(tmp_path / "mpl"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("resume: skipping") == 2
    assert {r: p.stat().st_mtime_ns for r, p in paths.items()} == before


@pytest.mark.parametrize(
    ("pattern", "key", "spelt"),
    [
        ("${hydra:runtime.choices.arch}_w${arch.kwargs.width}/n${dataset.train_limit}", "arch.kwargs.width", True),
        ("${oc.select:arch.kwargs.stem_stride,1}/seed${seed}", "arch.kwargs.stem_stride", True),
        ("${hydra:runtime.choices.train}/seed${seed}", "train", True),
        ("n${dataset.train_limit}_e${train.epochs}", "train", False),  # train.epochs is not the train group
        ("n${dataset.train_limit}", "train_limit", False),
        ("${hydra:runtime.choices.dataset}/seed${seed}", "attack.poison_rate", False),
    ],
)
def test_a_subdir_pattern_that_spells_a_key_gets_no_extra_level(pattern: str, key: str, spelt: bool) -> None:
    assert spelt_in(pattern, key) is spelt


def test_only_swept_settings_that_are_not_coordinates_get_a_level() -> None:
    task = ["attack=badnets,blend", "seed=0,1", "train.epochs=2,6", "threads=1,2", "paths.cache=/a,/b"]
    task += ["defense=rnp", "hydra/launcher=parallel", "train=quick,cifar", "attack.poison_rate=0.1"]
    config = OmegaConf.create(
        {"hydra": {"overrides": {"task": task}, "sweeper": {"params": {"dataset.train_limit": "100,200"}}}}
    )
    assert swept_settings(config) == ["dataset.train_limit", "train.epochs", "train"]


def test_grid_check_names_missing_options_before_the_sweep_starts() -> None:
    config = OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"params": {"attack": "badnets,nosuch", "defense": "none,rnp", "seed": "0,1"}},
                "overrides": {"task": ["defense=rnp,zzz", "train.epochs=1"]},
            }
        }
    )
    problems = missing_options(config, CONF)
    assert len(problems) == 2
    assert problems[0].startswith("attack=nosuch not in conf/attack/; choose from ") and "badnets" in problems[0]
    assert problems[1].startswith("defense=zzz not in conf/defense/")  # the command line replaced the preset's list


@pytest.mark.parametrize("preset", group_options("experiment"))
def test_every_preset_names_its_sweep_dir(preset: str) -> None:
    """A preset's sweeps go to outputs/multirun/<preset>/, so rerunning one resumes it."""
    assert OmegaConf.load(option_file("experiment", preset)).sweep_name == preset


@pytest.mark.parametrize("preset", ["rnp_cifar10", "rnp_imagenet12"])
def test_paper_presets_hold_their_grid(preset: str) -> None:
    spec = OmegaConf.load(option_file("experiment", preset))
    params = spec.hydra.sweeper.params
    assert set(params) == {"attack", "defense", "seed"}
    assert {"none", "rnp", "anp"} <= set(params.defense.split(","))
    assert "none" in params.attack.split(",")  # the clean model: each defense's cost with no backdoor
    if preset == "rnp_cifar10":
        assert len(params.attack.split(",")) == 13  # the paper's 12 attacks and the clean model
    for problem in missing_options(OmegaConf.create({"hydra": {"sweeper": {"params": params}}}), CONF):
        # an option still being written: the sweep refuses to start (GridCheck) until it exists
        warnings.warn(f"{preset}: {problem}", stacklevel=1)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["submitit_local", "parallel"])
def test_parallel_launchers_run_a_grid_and_share_one_model(launcher: str, tmp_path: Path) -> None:
    pytest.importorskip(
        {"submitit_local": "hydra_plugins.hydra_submitit_launcher", "parallel": "hydra_plugins.hydra_joblib_launcher"}[
            launcher
        ]
    )
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, f"hydra/launcher={launcher}", "attack=badnets", "defense=none,clp", "seed=3"]
    args += ["attack.poison_rate=0.1,0.2"]  # a swept setting: each value's cells get their own level, in workers too
    proc = run_cli([*args, f"hydra.sweep.dir={sweep}"], tmp_path, MPLCONFIGDIR=str(tmp_path / "mpl"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rate in ("0.1", "0.2"):
        sources = sorted(
            json.loads((cell_dir(sweep / f"attack.poison_rate={rate}", "badnets", d, 3) / "result.json").read_text())[
                "model_source"
            ]
            for d in ("none", "clp")
        )
        assert sources == ["cache", "trained"]  # run at once or not, one job trained the model, the other loaded it
    assert (sweep / "results.md").exists()
