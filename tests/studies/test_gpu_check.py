"""The GPU check (studies.gpu_check): its CIFAR-format stand-in and its whole path as a CPU smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmark.sources import load_dataset
from benchmark.sources.idx import idx_pair
from benchmark.sources.loaders import EMBEDDED_DIR
from studies import gpu_check


def test_the_standin_reads_back_as_cifar10_with_the_source_images(tmp_path: Path) -> None:
    """Written in CIFAR-10's format, read by the harness's own cifar10 loader: same labels, images resized."""
    standin = gpu_check.write_standin(EMBEDDED_DIR, tmp_path / "cifar10", n_train=1000, n_test=300)
    train, test = load_dataset("cifar10", tmp_path, False)
    source_train = idx_pair(EMBEDDED_DIR, "train")
    assert source_train is not None and (standin.train, standin.test) == (1000, 300)
    assert train.x.shape == (1000, 3, 32, 32) and test.x.shape == (300, 3, 32, 32) and train.x.dtype == torch.uint8
    assert torch.equal(train.y, source_train.y[:1000])
    assert torch.equal(train.x[:, 0], train.x[:, 1]) and torch.equal(train.x[:, 1], train.x[:, 2])  # grey, replicated
    # the 28x28 image scaled to 32x32: a dark frame stays dark, the mean brightness is kept within a few levels
    assert (train.x.float().mean() - source_train.x[:1000].float().mean()).abs() < 3
    marker = json.loads((tmp_path / "cifar10" / "cifar-10-batches-py" / "STANDIN.json").read_text())
    assert marker["standin_for"].startswith("CIFAR-10") and marker["train"] == 1000


def test_a_complete_standin_is_reused_and_a_different_one_rewritten(tmp_path: Path) -> None:
    root = tmp_path / "cifar10"
    gpu_check.write_standin(EMBEDDED_DIR, root, 500, 100)
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    stamp = batch.stat().st_mtime_ns
    gpu_check.write_standin(EMBEDDED_DIR, root, 500, 100)
    assert batch.stat().st_mtime_ns == stamp  # reused
    gpu_check.write_standin(EMBEDDED_DIR, root, 600, 100)
    assert json.loads((root / "cifar-10-batches-py" / "STANDIN.json").read_text())["train"] == 600
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_without_fashion_mnist_the_check_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"Fashion-MNIST's IDX files .* were not found in .*--fashion-mnist"):
        gpu_check.find_fashion_mnist(tmp_path, debug=False)


def test_gpu_check_in_debug_mode_runs_every_defense_and_perf(tmp_home: Path, capsys: pytest.CaptureFixture) -> None:
    """The same command as on a GPU, shrunk by debug=default: stand-in, an 8-cell -m sweep, perf, one table."""
    out = tmp_home / "check"
    assert gpu_check.main(["--out", str(out), "debug=default"]) == 0
    summary = json.loads((out / "gpu_check.json").read_text())
    rows = {r["defense"]: r for r in summary["rows"]}
    assert list(rows) == list(gpu_check.DEFENSES) and all(r["status"] == "done" for r in rows.values())
    assert sum(r["model_source"] == "trained" for r in rows.values()) == 1  # one model, trained once, cached
    assert summary["perf"]["figures"]["train"]["images_per_s"] > 0
    text = capsys.readouterr().out
    assert "| ibau |" in text and "Cells finished: 8 of 8" in text and "studies.perf" in text
    assert (out / "gpu_check.md").read_text().startswith("# GPU check")
