"""Progress reporting: log lines with ETA off a terminal, throttled by time; a real non-tty run logs often enough."""

from __future__ import annotations

import itertools
import logging
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from benchmark.core.progress import Progress, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.progress"]


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.INFO, logger="test.progress")
    return logging.getLogger("test.progress")


def test_lines_are_throttled_by_time_and_the_last_step_always_logs(log, caplog) -> None:
    clock = FakeClock()
    p = Progress("anp masks", 100, "iteration", logger=log, interval_s=10.0, terminal=False, clock=clock)
    reads = []

    def metrics() -> dict[str, float]:
        reads.append(p.done)
        return {"loss": 0.5}

    for _ in range(100):
        clock.now += 1.0  # one second per iteration: a line every 10 iterations
        p.update(metrics)
    p.close()
    out = lines(caplog)
    assert len(out) == 11  # the first step, then one every 10 s, and the last
    assert out[0] == "anp masks: iteration 1/100  loss 0.5000  1 s, ETA 1m39s"
    assert out[1] == "anp masks: iteration 11/100  loss 0.5000  11 s, ETA 1m29s"
    assert out[-1] == "anp masks: iteration 100/100  loss 0.5000  1m40s, done"
    assert reads == [1, *range(11, 100, 10), 100]  # metrics (a device sync) are read only for a line


def test_an_early_stop_gets_its_last_line_from_close(log, caplog) -> None:
    clock = FakeClock()
    p = Progress("rnp unlearn", 20, logger=log, interval_s=10.0, terminal=False, clock=clock)
    for epoch in range(3):
        clock.now += 1.0
        p.update(lambda e=epoch: {"acc": 0.9 - 0.3 * e})
    p.close()
    assert lines(caplog) == [
        "rnp unlearn: epoch 1/20  acc 0.9000  1 s, ETA 19 s",
        "rnp unlearn: epoch 3/20  acc 0.3000  3 s, stopped early",
    ]


def test_a_line_can_come_from_inside_a_long_step(log, caplog) -> None:
    clock = FakeClock()
    p = Progress("backdoor training", 6, logger=log, interval_s=10.0, terminal=False, clock=clock)
    clock.now += 5.0
    p.within(0.25, {"loss": 1.0})  # not due yet
    clock.now += 10.0
    p.within(0.5, {"loss": 0.8})
    assert lines(caplog) == ["backdoor training: epoch 1/6 (50%)  loss 0.8000  15 s, ETA 2m45s"]


def test_on_a_terminal_a_bar_and_no_log_lines(log, caplog) -> None:
    clock = FakeClock()
    p = Progress("defense curve", 5, "point", logger=log, terminal=True, clock=clock)
    for _ in range(5):
        clock.now += 20.0
        p.update({"clean_acc": 0.8})
    assert p.bar is not None and p.bar.n == 5
    p.close()
    assert lines(caplog) == []


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (0.4, 42, 185, 7620)] == ["0 s", "42 s", "3m05s", "2h07m"]


ROOT = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def log_gaps(log_file: Path) -> list[float]:
    """Seconds between consecutive timestamped lines of a Hydra job log."""
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in map(STAMP.match, log_file.open()) if m]
    return [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]


@pytest.mark.slow
def test_a_non_tty_quickstart_logs_a_line_at_least_every_30_s(tmp_path: Path) -> None:
    """The quickstart as nohup or SLURM runs it (stderr not a terminal): its log never goes quiet for 30 s."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", "experiment=quickstart", "threads=2", f"hydra.run.dir={out}"],
        env={**os.environ, "BENCHMARK_HOME": str(tmp_path / "home"), "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_text = (out / "benchmark.log").read_text()
    for phase in ("backdoor training: epoch", "rnp unlearn:", "rnp recover:", "defense curve: point"):
        assert phase in log_text
    assert "ETA" in log_text
    assert max(log_gaps(out / "benchmark.log")) <= 30.0
