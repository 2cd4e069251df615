"""Intervals over seeds: the Student t quantile, the 95% interval of a mean, and a paired difference.

The report states means over few seeds (often 3), where the normal 1.96 would understate the spread by far
(t = 4.30 for 3 seeds): the quantile is Student t's with df = n - 1, from `scipy.stats.t`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


def t_quantile(p: float, df: int) -> float:
    """The `p` quantile of Student t with `df` degrees of freedom, for p in (0.5, 1) (an upper critical value)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    return float(stats.t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """A two-sided 95% Student t interval of a mean over n values (df = n - 1)."""

    lo: float
    hi: float

    def pct(self) -> str:
        """A fraction's interval in percent, shown within [0, 100]: near 0 or 1 the t interval's normal spread
        reaches past the bounds a rate cannot cross (summary.csv keeps the unclipped values)."""
        return f"[{100 * max(0.0, self.lo):.1f}, {100 * min(1.0, self.hi):.1f}]"


def t_interval(xs: Sequence[float]) -> Interval | None:
    """mean ± t_{0.975, n-1} · s / √n (s: sample std); None for fewer than 2 values (no spread to go on)."""
    if len(xs) < 2:
        return None
    mean, half = statistics.fmean(xs), t_quantile(0.975, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Interval(mean - half, mean + half)


@dataclass(frozen=True)
class Paired:
    """The mean of per-seed differences a − b (same seeds, same backdoored models) and its 95% t interval."""

    mean: float
    n: int
    interval: Interval | None

    @classmethod
    def of(cls, a: dict[int, float], b: dict[int, float]) -> Paired | None:
        """Over the seeds both `a` and `b` have (seed -> value); None when they share none."""
        diffs = [a[s] - b[s] for s in sorted(a.keys() & b.keys())]
        if not diffs:
            return None
        return cls(statistics.fmean(diffs), len(diffs), t_interval(diffs))

    def points(self) -> str:
        """In signed points with the interval: `−1.2 [−3.4, 1.0]` (n=1: no interval)."""
        sign = lambda v: f"{100 * v:+.1f}".replace("-", "−")  # noqa: E731
        text = sign(self.mean)
        return text + (f" [{sign(self.interval.lo)}, {sign(self.interval.hi)}]" if self.interval else "")
