"""Progress of a long loop, visible wherever the run is watched.

On a terminal a tqdm bar; otherwise (nohup, SLURM, a pipe) an INFO log line at most every `interval_s`
seconds and at the end, with the step, the loop's own metrics, the seconds so far and an ETA, so that
`benchmark.log` tells progress from a hang. Metrics are passed as a callable and computed only when a
line or the bar's postfix is due: reading a device value (`.item()`) waits for the device, and a loop
should not pay that every step. Reporting only reads what the loop computed; it never draws random
numbers or evaluates anything, so it cannot change a result.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping

from tqdm.auto import tqdm

Metrics = Mapping[str, float] | Callable[[], Mapping[str, float]] | None

# Seconds between two log lines when stderr is not a terminal (well inside "a line every 30 s of work").
LOG_INTERVAL_S = 10.0
# Seconds between two refreshes of the bar's metrics on a terminal.
BAR_INTERVAL_S = 1.0


def stderr_is_terminal() -> bool:
    """Whether a person watches stderr live (then bars; else log lines)."""
    return sys.stderr is not None and sys.stderr.isatty()


def format_seconds(seconds: float) -> str:
    """`42 s`, `3m05s`, `2h07m`: short enough for a log line."""
    s = round(max(0.0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_metrics(metrics: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def _read(metrics: Metrics) -> dict[str, float]:
    return dict(metrics() if callable(metrics) else (metrics or {}))


class Progress:
    """Reports the progress of a loop of `total` steps (epochs, iterations, curve points).

    Call `update` after each step and `close` (or use it as a context manager) at the end; a loop that
    stops early (RNP's unlearning) still gets its last line from `close`.
    """

    def __init__(
        self,
        desc: str,
        total: int,
        unit: str = "epoch",
        *,
        logger: logging.Logger | None = None,
        interval_s: float = LOG_INTERVAL_S,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.log = logger or logging.getLogger("benchmark.progress")
        self.interval_s = interval_s
        self.clock = clock
        self.done = 0
        self.start = self.last = clock()
        self.logged = 0  # `done` at the last line (or bar refresh)
        self.metrics: Mapping[str, float] = {}
        self.pending: Metrics = None  # the metrics of the last step, read only when a line is due
        terminal = stderr_is_terminal() if terminal is None else terminal
        self.bar = tqdm(total=total, desc=desc, leave=False) if terminal else None

    def update(self, metrics: Metrics = None, n: int = 1) -> None:
        """`n` more steps done; `metrics` (a mapping, or a callable giving one) describe them."""
        self.done += n
        self.pending = metrics
        now = self.clock()
        interval = BAR_INTERVAL_S if self.bar is not None else self.interval_s
        # The first step always shows (a new phase announces itself, with a first ETA), then one every interval.
        due = self.logged == 0 or now - self.last >= interval or self.done >= self.total
        if self.bar is not None:
            self.bar.update(n)
        if not due:
            return
        self.metrics = _read(metrics)
        self.last, self.logged = now, self.done
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in self.metrics.items()})
        else:
            self._line(now)

    def within(self, fraction: float, metrics: Metrics = None) -> None:
        """Part of the current step is done (e.g. a share of an epoch's batches): on a slow machine one
        epoch can outlast the log interval, so a line may come from inside it, with the running metrics."""
        if self.bar is not None:
            return
        now = self.clock()
        if now - self.last < self.interval_s:
            return
        self.metrics = _read(metrics)
        self.last = now
        self._line(now, fraction=min(max(fraction, 0.0), 1.0))

    def close(self) -> None:
        """End of the loop: the bar goes; steps done since the last line (an early stop) get one."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            return
        if self.done > self.logged:
            self.metrics = _read(self.pending)
            self.logged = self.done
            self._line(self.clock(), closing=True)

    def _line(self, now: float, closing: bool = False, fraction: float | None = None) -> None:
        elapsed = now - self.start
        done = self.done + (fraction or 0.0)
        left = self.total - done
        if left <= 0:
            eta = "done"
        elif closing:
            eta = "stopped early"
        else:
            eta = f"ETA {format_seconds(elapsed / done * left)}" if done > 0 else "ETA unknown"
        where = f"{self.done}/{self.total}" if fraction is None else f"{self.done + 1}/{self.total} ({fraction:.0%})"
        stats = format_metrics(self.metrics)
        self.log.info(
            "%s: %s %s%s  %s, %s",
            self.desc,
            self.unit,
            where,
            f"  {stats}" if stats else "",
            format_seconds(elapsed),
            eta,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
