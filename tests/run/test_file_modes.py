"""Written files honour the umask like a plain write: a model cache on a group's shared file system must be
readable (and, under umask 002, writable) by the group, though every write goes through a private temp file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmark.core.io import atomic_torch_save, atomic_write_json, atomic_write_text, current_umask
from benchmark.sources.archives import extract
from tests.conftest import through_cache

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "experiment=quickstart",
    "train.epochs=1",
    "dataset.train_limit=300",
    "dataset.test_limit=200",
    "arch.kwargs.width=4",
    "defense_data.size=100",
    "defense=none",
    "threads=1",
]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def test_current_umask_reads_without_changing_it(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path: Path, umask: int) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    expected = 0o666 & ~umask
    assert mode(plain) == expected
    assert [mode(tmp_path / n) for n in ("a.txt", "a.json", "a.pt")] == [expected] * 3


def test_cached_model_and_its_sidecar_honour_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "models" / "abc.safetensors"
    through_cache(path, torch.nn.Linear(2, 2), lambda m: ({"train_s": 0.0}, {}), {"key": "abc"})
    assert mode(path) == mode(path.with_suffix(".json")) == 0o666 & ~umask


def test_an_extracted_archive_folder_honours_the_umask(tmp_path: Path, umask: int) -> None:
    member = tmp_path / "w.bin"
    member.write_bytes(b"0" * 10)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(member, arcname="w.bin")
    target = extract(archive, tmp_path / "a.d")
    assert mode(target) == 0o777 & ~umask


@pytest.mark.parametrize("mask", [pytest.param(0o022, marks=pytest.mark.slow), 0o002])
def test_a_cells_result_and_cached_model_honour_the_umask(tmp_path: Path, mask: int) -> None:
    """The real CLI under a cluster user's umask: result.json, the cached model and its sidecar."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "HOME": str(tmp_path), "BENCHMARK_HOME": str(tmp_path / "bench"), "WANDB_MODE": "disabled"}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whatever is installed
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", *TINY, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(mask),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = sorted((tmp_path / "bench" / "models").rglob("*.safetensors"))
    assert len(models) == 1
    files = [run_dir / "result.json", models[0], models[0].with_suffix(".json")]
    assert [oct(mode(f)) for f in files] == [oct(0o666 & ~mask)] * 3
