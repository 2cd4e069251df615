"""The command line, end to end, on the embedded data (subprocesses, as a user would run it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.report.table import read_cell
from tests.conftest import FAST
from tests.helpers.cli import run_cli

RESULT_KEYS = [
    "schema", "cell", "model_source", "before", "after", "der", "defense_info", "timing_s", "config", "versions",
]  # fmt: skip


def check_result(path: Path, defense: str) -> dict:
    result = json.loads(path.read_text())
    assert [k for k in RESULT_KEYS if k not in result] == []
    assert result["schema"] == 1
    cell = {"attack": "badnets", "dataset": "embedded", "arch": "convnet", "defense": defense, "seed": 0}
    assert result["cell"] == cell
    for phase in ("before", "after"):
        assert set(result[phase]) == {"clean_acc", "asr", "robust_acc"}
        assert all(0.0 <= v <= 1.0 for v in result[phase].values())
    assert 0.0 <= result["der"] <= 1.0
    assert {"data", "model", "defense", "evaluate", "total"} <= set(result["timing_s"])
    assert result["versions"]["torch"] and result["versions"]["benchmark"]
    assert result["config"]["seed"] == 0
    assert result["runtime"]["device"] == "cpu" and result["runtime"]["precision"] == "fp32"
    return result


def test_single_cell_writes_result_and_reuses_the_cached_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli([*FAST, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = check_result(run_dir / "result.json", "rnp")
    assert first["model_source"] == "trained"
    curve = (run_dir / "curve.csv").read_text().splitlines()
    assert curve[0] == "threshold,pruned,clean_acc,asr,robust_acc" and len(curve) == 11  # the quickstart's 10
    assert len(first["defense_info"]["curve"]) == 10
    assert (run_dir / "benchmark.log").read_text().count("before: clean acc") == 1

    proc = run_cli([*FAST, f"hydra.run.dir={tmp_path / 'again'}", "defense=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    second = check_result(tmp_path / "again" / "result.json", "none")
    assert second["model_source"] == "cache" and second["before"] == first["before"]
    check_learned_masks_are_reused(tmp_path, first)


def check_learned_masks_are_reused(tmp_path: Path, first: dict) -> None:
    """Another pruning threshold reuses the first cell's RNP masks (its learning seconds counted in the report);
    reuse_learned=false learns them again and records nothing about a cache."""
    assert first["defense_info"]["learned_masks"]["reused"] is False
    run_dir = tmp_path / "threshold"
    proc = run_cli([*FAST, f"hydra.run.dir={run_dir}", "defense.prune_threshold=0.5"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    reused = check_result(run_dir / "result.json", "rnp")
    record = reused["defense_info"]["learned_masks"]
    assert record["reused"] is True and record["entry"] == first["defense_info"]["learned_masks"]["entry"]
    assert reused["timing_s"]["defense_reused"] == record["learned_seconds"] > 0
    assert reused["defense_info"]["recover"] == first["defense_info"]["recover"]
    assert reused["defense_info"]["selected_threshold"] == 0.5
    row = read_cell(run_dir, run_dir / "result.json").row
    assert row["seconds_defense"] == pytest.approx(reused["timing_s"]["defense"] + record["learned_seconds"])
    proc = run_cli([*FAST, f"hydra.run.dir={tmp_path / 'off'}", "reuse_learned=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    off = check_result(tmp_path / "off" / "result.json", "rnp")
    assert "learned_masks" not in off["defense_info"] and "defense_reused" not in off["timing_s"]
    assert off["after"] == first["after"]


def test_multirun_writes_one_result_per_cell_in_named_subdirs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *FAST, "defense=none,rnp", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for defense in ("none", "rnp"):
        check_result(sweep / "embedded" / "convnet" / "badnets" / defense / "seed0" / "result.json", defense)


def test_missing_cifar10_fails_fast_with_a_short_message(tmp_path: Path) -> None:
    proc = run_cli(["dataset.download=false", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out
    assert "cifar10" in out and str(tmp_path / "bench" / "data" / "cifar10") in out
    assert "cifar-10-python.tar.gz" in out and "experiment=quickstart" in out


def test_bad_override_fails_at_start_naming_the_range(tmp_path: Path) -> None:
    proc = run_cli([*FAST, "attack.poison_rate=1.5", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "poison_rate=1.5 is out of range: allowed [0.0, 1.0]" in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "result.json").exists()


def test_bad_precision_fails_at_start_naming_the_choices(tmp_path: Path) -> None:
    proc = run_cli([*FAST, "precision=fp16", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "precision='fp16' is invalid: choose from auto, fp32, bf16" in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "result.json").exists()


def test_wandb_logger_runs_offline_without_an_api_key(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli([*FAST, "logger=wandb", f"hydra.run.dir={run_dir}"], tmp_path, WANDB_MODE=None)
    assert proc.returncode == 0, proc.stderr
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def _one_paragraph(proc) -> str:  # type: ignore[no-untyped-def]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "Traceback" not in out and "Error executing job" not in out
    return out


def test_an_output_folder_that_cannot_be_written_is_one_message_before_hydra(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    for bad in (tmp_path / "a_file" / "run", Path("/proc/h25-run")):
        out = _one_paragraph(run_cli([*FAST, f"hydra.run.dir={bad}"], tmp_path, timeout=60))
        assert f"hydra.run.dir={bad}" in out


def test_a_foreign_target_and_an_unset_env_variable_are_one_message(tmp_path: Path) -> None:
    run = f"hydra.run.dir={tmp_path / 'run'}"
    out = _one_paragraph(run_cli([*FAST, "defense._target_=os.system", run], tmp_path, timeout=60))
    assert "_target_='os.system' is not allowed for defense" in out
    out = _one_paragraph(run_cli([*FAST, "seed=${oc.env:H25_SURELY_UNSET}", run], tmp_path, timeout=60))
    assert "H25_SURELY_UNSET" in out and "needs NAME set in the environment" in out
