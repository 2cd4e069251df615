"""Device choice on faked one- and two-GPU machines (CPU only): every CUDA device is indexed before it is used.

`torch.cuda.set_device` refuses a bare `cuda`; a sweep once handed it one and every cell failed on a
one-GPU machine. These tests fake torch.cuda's answers and run the real `select_device`, `setup_runtime`,
`claimed_device` and sweep-cell path, with only the cell's work itself (`run_cell`) stubbed out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmark.core.errors import BenchmarkError, ConfigError
from benchmark.run.config import RunConfig, build_run_config
from benchmark.run.runtime import select_device, setup_runtime, start_runtime
from benchmark.run.sweep import FAILED, RESULT, claimed_device, run_sweep_cell
from tests.conftest import FAST, compose_cfg


def refused(device: Any) -> str:
    """torch's words when `set_device` gets a device without an index (torch.cuda._utils._get_device_index)."""
    return f"Expected a torch.device with a specified index or an integer, but got:{device}"


class FakeGPUs:
    """What torch.cuda answers on a machine with `count` GPUs, and the indexes `set_device` was given."""

    def __init__(self, count: int) -> None:
        self.count, self.current = count, 0
        self.set_to: list[int] = []

    def set_device(self, device: torch.device | str | int) -> None:
        """As torch's: an unindexed CUDA device is a ValueError; an index beyond the GPUs, a CUDA error."""
        index = device
        if isinstance(device, (str, torch.device)):
            index = torch.device(device).index
            if index is None:
                raise ValueError(refused(device))
        assert isinstance(index, int) and 0 <= index < self.count, f"invalid device ordinal {index}"
        self.current = index
        self.set_to.append(index)


BACKEND_FLAGS = [(torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "allow_tf32")]
BACKEND_FLAGS += [(torch.backends.cuda.matmul, "allow_tf32")]  # properties of torch's modules: set, not patched


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], FakeGPUs]]:
    """Installs a FakeGPUs of a given count; the backend flags `setup_runtime` sets are restored afterwards."""

    def install(count: int) -> FakeGPUs:
        gpus = FakeGPUs(count)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: gpus.current)
        monkeypatch.setattr(torch.cuda, "set_device", gpus.set_device)
        return gpus

    before = [getattr(module, name) for module, name in BACKEND_FLAGS]
    yield install
    for (module, name), value in zip(BACKEND_FLAGS, before, strict=True):
        setattr(module, name, value)


class Cells:
    """Stands in for the cell's work: records, per run dir, the device it was handed and the current GPU then."""

    def __init__(self) -> None:
        self.handed: dict[Path, tuple[torch.device, int]] = {}
        self.during: Callable[[], None] | None = None  # run once inside the next cell (while it holds its GPU)

    def run_cell(self, rc: RunConfig, run_dir: Path, device: torch.device) -> dict[str, Any]:
        self.handed[run_dir] = (device, torch.cuda.current_device())
        during, self.during = self.during, None
        if during is not None:
            during()
        return {}


@pytest.fixture
def cells(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cells:
    """`run_cell` stubbed (it is imported inside the sweep's cell path, so patching the module suffices)."""
    stub = Cells()
    monkeypatch.setattr("benchmark.run.cell.run_cell", stub.run_cell)
    monkeypatch.setenv("BENCHMARK_HOME", str(tmp_path / "bench"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return stub


def sweep_cell(tmp_path: Path, device: str, job_num: int = 0, name: str = "cell") -> tuple[str, Path]:
    """Runs one sweep cell with `device=...` through `run_sweep_cell`: (its status, its run dir)."""
    run_dir = tmp_path / "sweep" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose_cfg([*FAST, f"device={device}", "threads=1"])
    return run_sweep_cell(cfg, run_dir, job_num, tmp_path / "sweep"), run_dir


def test_the_fake_set_device_refuses_a_bare_cuda_as_torch_does() -> None:
    with pytest.raises(ValueError) as real:
        torch.cuda.set_device(torch.device("cuda"))  # refused before CUDA is touched: runs on any machine
    assert str(real.value) == refused(torch.device("cuda"))
    with pytest.raises(ValueError, match=r"but got:cuda$"):
        FakeGPUs(1).set_device("cuda")


@pytest.mark.parametrize("name", ["auto", "cuda", "cuda:0"])
def test_one_gpu_every_cuda_name_is_cuda_0(fake_gpus, name: str) -> None:
    fake_gpus(1)
    assert select_device(name) == torch.device("cuda", 0)


def test_bare_cuda_and_auto_mean_the_current_gpu(fake_gpus) -> None:
    fake_gpus(2).current = 1
    assert select_device("auto") == select_device("cuda") == torch.device("cuda", 1)
    assert select_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize(("count", "name"), [(1, "cuda:1"), (2, "cuda:2"), (2, "cuda:7")])
def test_a_gpu_index_beyond_the_visible_ones_is_one_clear_config_error(fake_gpus, count: int, name: str) -> None:
    fake_gpus(count)
    with pytest.raises(ConfigError) as err:
        select_device(name)
    message = str(err.value)
    assert f"device={name!r} is out of range" in message and f"[0, {count - 1}]" in message
    assert "\n" not in message and isinstance(err.value, BenchmarkError)  # printed alone, without a traceback


def test_without_cuda_auto_is_the_cpu_and_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ConfigError, match="is invalid"):
        select_device("gpu")


@pytest.mark.parametrize("name", ["auto", "cuda", "cuda:0"])
def test_setup_runtime_makes_the_indexed_gpu_current_and_sets_backend_flags(fake_gpus, name: str) -> None:
    gpus = fake_gpus(1)
    assert setup_runtime(0, name) == torch.device("cuda", 0)
    assert gpus.set_to == [0]
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32


def test_a_single_run_pins_its_gpu(fake_gpus) -> None:
    """`python -m benchmark device=cuda:1` (no sweep): the run's GPU becomes the current one."""
    gpus = fake_gpus(2)
    rc = build_run_config(compose_cfg([*FAST, "device=cuda:1", "threads=1"]))
    assert start_runtime(rc) == torch.device("cuda", 1)
    assert (gpus.set_to, gpus.current) == ([1], 1)


@pytest.mark.parametrize("name", ["auto", "cuda", "cuda:0"])
def test_one_gpu_sweep_cells_run_on_cuda_0(fake_gpus, cells: Cells, tmp_path: Path, name: str) -> None:
    gpus = fake_gpus(1)
    for job in (0, 1):
        status, run_dir = sweep_cell(tmp_path, name, job, name=f"job{job}")
        assert status == "done" and not (run_dir / FAILED).exists()
        assert cells.handed[run_dir] == (torch.device("cuda", 0), 0)
    assert gpus.set_to == [0, 0]
    assert not list((tmp_path / "sweep" / ".locks").glob("*cuda*.lock"))  # one GPU: nothing to claim


@pytest.mark.parametrize(
    ("name", "expected"),
    [("auto", [0, 1]), ("cuda", [0, 1]), ("cuda:0", [0, 0]), ("cuda:1", [1, 1])],
)
def test_two_gpu_sweep_cells_claim_a_gpu_or_keep_the_pinned_one(
    fake_gpus, cells: Cells, tmp_path: Path, name: str, expected: list[int]
) -> None:
    gpus = fake_gpus(2)
    for job, index in enumerate(expected):
        status, run_dir = sweep_cell(tmp_path, name, job, name=f"job{job}")
        assert status == "done" and not (run_dir / FAILED).exists()
        assert cells.handed[run_dir] == (torch.device("cuda", index), index)
    assert gpus.set_to == expected


@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_two_jobs_running_at_once_hold_different_gpus(fake_gpus, cells: Cells, tmp_path: Path, name: str) -> None:
    """While job 0 holds GPU 0, another job 0 (say, of a second sweep into the same dir) starts: it takes GPU 1."""
    gpus = fake_gpus(2)
    second: list[tuple[str, Path]] = []
    cells.during = lambda: second.append(sweep_cell(tmp_path, name, 0, name="second"))
    status, run_dir = sweep_cell(tmp_path, name, 0, name="first")
    [(status_2, run_dir_2)] = second
    assert (status, status_2) == ("done", "done")
    assert cells.handed[run_dir] == (torch.device("cuda", 0), 0)
    assert cells.handed[run_dir_2] == (torch.device("cuda", 1), 1)
    assert gpus.set_to == [0, 1]
    assert not (run_dir / FAILED).exists() and not (run_dir_2 / FAILED).exists()


def test_a_gpu_that_is_not_there_fails_the_cell_with_a_clear_record(fake_gpus, cells: Cells, tmp_path: Path) -> None:
    gpus = fake_gpus(1)
    status, run_dir = sweep_cell(tmp_path, "cuda:1", 0)
    assert status == "failed" and not (run_dir / RESULT).exists() and run_dir not in cells.handed
    error = json.loads((run_dir / FAILED).read_text())["error"]
    assert error.startswith("ConfigError: device='cuda:1' is out of range: 1 GPU visible here")
    assert gpus.set_to == []


def test_claims_release_their_gpu_and_leave_pinned_names_alone(fake_gpus, tmp_path: Path) -> None:
    fake_gpus(2)
    with claimed_device("cuda", 1, tmp_path) as first, claimed_device("cuda", 1, tmp_path) as second:
        assert (first, second) == ("cuda:1", "cuda:0")
    with claimed_device("cuda", 1, tmp_path) as again:
        assert again == "cuda:1"  # released on leaving
    for pinned in ("cuda:0", "cuda:1", "cpu"):
        with claimed_device(pinned, 0, tmp_path) as name:
            assert name == pinned


def test_the_perf_benchmark_names_a_missing_gpu_in_one_line(fake_gpus) -> None:
    """`python -m studies.perf --device cuda:3` on a one-GPU machine: an error line, no traceback, no run."""
    from studies.perf import bench

    fake_gpus(1)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--device", "cuda:3", "--size", "tiny", "--threads", "1"])
    assert str(stop.value.code).startswith("error: device='cuda:3' is out of range: 1 GPU visible here")
