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
    assert result["options"] == {"compile": False, "seed": 0, "precision": "bf16", "profile": True}
    assert set(result["profile"]) == {"train", "eval", "rnp", "anp", "reference_rnp"}
    for table in result["profile"].values():
        assert table["top"] and table["ops_s"] > 0 and sum(r["share"] for r in table["top"]) <= 1.0 + 1e-6
    # the reference's per-sample loading shows up as its own entry
    assert any("DataLoader" in r["op"] for r in result["profile"]["reference_rnp"]["top"])


def test_bad_thread_count_is_refused_naming_the_value() -> None:
    with pytest.raises(SystemExit, match="--threads=0 is invalid"):
        perf.main(["--size", "tiny", "--device", "cpu", "--threads", "0"])
