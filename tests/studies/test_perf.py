"""Smoke test of the performance benchmark: it runs every phase and writes its JSON (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studies.perf import bench as perf


def test_tiny_perf_run_reports_every_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "perf.json"
    result = perf.main(["--size", "tiny", "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)
    assert result["complete"] is True
    f = result["figures"]
    assert result["workload"]["size"] == "tiny" and result["device"]["type"] == "cpu"
    for phase in ("rnp", "anp", "reference_rnp"):
        assert f[phase]["seconds"] > 0
    assert f["train"]["images_per_s"] > 0 and f["eval"]["images_per_s"] > 0
    assert f["rnp"]["curve_points"] == 19
    assert f["reference_rnp"]["test_loading_s_per_evaluation"] > 0 and f["reference_rnp"]["sweep_s_per_threshold"] > 0
    assert f["ratio_reference_over_ours"] == pytest.approx(f["reference_rnp"]["seconds"] / f["rnp"]["seconds"], 0.01)
    assert 0.0 <= f["model"]["clean_acc"] <= 1.0 and 0.0 <= f["model"]["asr"] <= 1.0
    assert set(f["defenses"]) == {"fp", "clp", "nad", "ft", "ibau"}
    assert all(d["seconds"] > 0 and d["debug"] is True for d in f["defenses"].values())  # tiny: loops shrunk
    g = f["grid_projection"]
    assert g["experiment"] == "rnp_cifar10" and g["lower_bound"] is True  # attack preparation is not in a perf run
    assert set(g["cells_s"]) == {"none", "rnp", "anp", "fp", "clp", "nad", "ft", "ibau"}
    assert g["total_s"] == pytest.approx(g["models_s"] + sum(g["cells_s"].values()), abs=0.5)
    assert "size tiny is not the paper's network" in g["assumes"]
    assert [t["figure"] for t in result["targets"]] == ["reference / ours RNP ratio"]  # CUDA targets only on CUDA
    assert result["options"]["precision"] == "fp32" and "profile" not in result


@pytest.mark.slow  # the profiler's parsing takes ~20 s even on the tiny workload
def test_profiled_bf16_run_says_where_each_phase_spent_its_time() -> None:
    result = perf.main(["--size", "tiny", "--device", "cpu", "--threads", "1", "--precision", "bf16", "--profile"])
    assert result["options"] == {"compile": "eager", "seed": 0, "precision": "bf16", "profile": True, "skip": []}
    assert set(result["profile"]) == {"train", "eval", "rnp", "anp", "reference_rnp"}
    for table in result["profile"].values():
        assert table["top"] and table["ops_s"] > 0 and sum(r["share"] for r in table["top"]) <= 1.0 + 1e-6
    # the reference's per-sample loading shows up as its own entry
    assert any("DataLoader" in r["op"] for r in result["profile"]["reference_rnp"]["top"])


def test_a_run_may_skip_the_reference_and_the_other_defenses(capsys: pytest.CaptureFixture[str]) -> None:
    result = perf.main(["--size", "tiny", "--device", "cpu", "--threads", "1", "--skip", "defenses,reference"])
    f = result["figures"]
    assert result["options"]["skip"] == ["defenses", "reference"]
    assert f["rnp"]["seconds"] > 0 and f["anp"]["seconds"] > 0 and f["train"]["images_per_s"] > 0
    assert not {"defenses", "reference_rnp", "ratio_reference_over_ours", "grid_projection"} & set(f)
    ratio = next(t for t in result["targets"] if t["figure"] == "reference / ours RNP ratio")
    assert ratio["measured"] is None and ratio["met"] is None
    err = capsys.readouterr().err
    assert "reference    skipped" in err and "not measured: its phase was skipped" in err


def test_a_run_cut_short_leaves_the_phases_it_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A time limit that stops perf after ANP still leaves training, evaluation, RNP and ANP in --out."""
    out = tmp_path / "perf.json"

    def stopped(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # what a timeout's signal ends in

    monkeypatch.setattr(perf, "bench_other_defenses", stopped)
    with pytest.raises(SystemExit):
        perf.main(["--size", "tiny", "--device", "cpu", "--threads", "1", "--out", str(out)])
    partial = json.loads(out.read_text())
    assert partial["complete"] is False and partial["last_phase"] == "anp"
    assert set(partial["figures"]) == {"train", "eval", "rnp", "anp"} and partial["figures"]["anp"]["seconds"] > 0


def test_bad_skip_is_refused_naming_the_phases() -> None:
    with pytest.raises(SystemExit, match="--skip='train' is invalid: name phases from defenses, reference"):
        perf.main(["--size", "tiny", "--device", "cpu", "--skip", "train"])


def test_bad_thread_count_is_refused_naming_the_value() -> None:
    with pytest.raises(SystemExit, match="--threads=0 is invalid"):
        perf.main(["--size", "tiny", "--device", "cpu", "--threads", "0"])


@pytest.mark.slow  # compiles ResNet-18's training, evaluation, RNP's and ANP's graphs on the CPU (minutes)
def test_compiled_run_records_the_mode_it_compiled_in() -> None:
    result = perf.main(["--size", "tiny", "--device", "cpu", "--threads", "2", "--compile", "--skip", "defenses"])
    assert result["options"]["compile"] == "default"  # reduce-overhead's CUDA graphs do not exist on the CPU
    assert "torch.compile (default)" in result["workload"]["ours"]
    assert result["figures"]["anp"]["seconds"] > 0 and result["figures"]["rnp"]["curve_points"] == 19
    assert result["figures"]["anp"]["compile_warmup_s"] > 0 and result["figures"]["rnp"]["compile_warmup_s"] > 0
