"""Intervals over seeds: the Student t quantile, the 95% interval of a mean, and a paired difference.

The report states means over few seeds (often 3), where the normal 1.96 would understate the spread by far
(t = 4.30 for 3 seeds). scipy is not a dependency: the two-sided 95% quantiles for df 1..30 are the
standard table's values (tests check each against `t_cdf`), and beyond 30 the quantile is found by
bisection on `t_cdf`, the integral of the t density (Simpson's rule).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% Student t quantiles t_{0.975, df}, df = 1..30 (the standard table, 4 decimals).
T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t_density(x: float, df: int) -> float:
    """The Student t probability density with `df` degrees of freedom."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: int, steps: int = 4000) -> float:
    """P(T <= x): 1/2 plus the density integrated over [0, x] by Simpson's rule (`steps` even)."""
    if x == 0:
        return 0.5
    h = abs(x) / steps
    total = t_density(0.0, df) + t_density(abs(x), df)
    total += sum((4 if i % 2 else 2) * t_density(i * h, df) for i in range(1, steps))
    half = total * h / 3
    return 0.5 + half if x > 0 else 0.5 - half


def t_quantile(p: float, df: int) -> float:
    """The `p` quantile of Student t, for p in (0.5, 1): table values at 0.975 and df <= 30, else bisection."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    if p == 0.975 and df <= len(T975):
        return T975[df - 1]
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


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
