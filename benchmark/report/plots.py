"""The report's pictures (matplotlib, drawn off-screen): clean acc vs ASR per defense, pruning curves per attack.

Importing this module raises ImportError without matplotlib; the report then skips the plots with a note.
"""

from __future__ import annotations

import io
import itertools
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node
import matplotlib.pyplot as plt

from benchmark.core.io import atomic_write_bytes
from benchmark.report.table import BASELINE, CLEAN, Group, Key, Stat, file_safe, key_names, key_title

CURVE_METRICS = (("clean_acc", "clean accuracy"), ("asr", "attack success rate"), ("robust_acc", "robust accuracy"))


def save_figure(fig: Any, path: Path) -> Path:
    """PNG bytes written atomically: a report being regenerated never shows a torn image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def point_labels(attacks: int, points: int) -> bool:
    """Name each point by its attack only when there are several attacks (one: the legend says it all) and
    few points per defense (more would bury the plot in labels)."""
    return attacks > 1 and points <= 4


def label_offset(series: int) -> tuple[int, int]:
    """Where a series' point labels sit (points): each series in its own spot around the point, so labels of
    points that coincide (e.g. defenses that changed nothing) do not print over each other."""
    spots = ((3, 3), (3, -9), (-30, 3), (-30, -9), (3, 10), (-30, 10))
    return spots[series % len(spots)]


def clean_vs_asr(path: Path, title: str, g: Group) -> Path:
    """One point per (attack, defense): mean ASR (x) and clean acc (y) over seeds, std as error bars."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    markers = "osD^vP*Xh<>p"
    for i, defense in enumerate([BASELINE, *g.defenses()]):
        pts = [(g.stat(a, defense, "asr"), g.stat(a, defense, "clean_acc")) for a in g.attacks()]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if not pts:
            continue
        ax.errorbar(
            [100 * x.mean for x, _ in pts],
            [100 * y.mean for _, y in pts],
            xerr=[100 * (x.std or 0.0) for x, _ in pts],
            yerr=[100 * (y.std or 0.0) for _, y in pts],
            fmt=markers[i % len(markers)],
            color="black" if defense == BASELINE else None,
            label=defense,
            capsize=2,
            alpha=0.85,
        )
        if point_labels(len(g.attacks()), len(pts)):
            names = [a for a in g.attacks() if g.stat(a, defense, "asr") and g.stat(a, defense, "clean_acc")]
            offset = label_offset(i)
            for name, (x, y) in zip(names, pts, strict=True):
                ax.annotate(name, (100 * x.mean, 100 * y.mean), fontsize=6, xytext=offset, textcoords="offset points")
    ax.set(xlabel="ASR (%)", ylabel="clean accuracy (%)", title=title, xlim=(-3, 103))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def mean_curve(
    curves: list[list[dict[str, Any]]], metric: str, x: str = "threshold"
) -> tuple[list[float], list[float], list[float]]:
    """Values of `x`, mean and std of `metric` over seeds at each (rows without `x` ignored)."""
    by_t: dict[float, list[float]] = defaultdict(list)
    for curve in curves:
        for row in curve:
            if row.get(x) is not None and row.get(metric) is not None:
                by_t[float(row[x])].append(float(row[metric]))
    ts = sorted(by_t)
    means = [statistics.fmean(by_t[t]) for t in ts]
    stds = [statistics.stdev(by_t[t]) if len(by_t[t]) > 1 else 0.0 for t in ts]
    return ts, means, stds


def threshold_curves(g: Group, attack: str) -> dict[str, tuple[list[list[dict[str, Any]]], list[float]]]:
    """Per defense with a threshold curve (RNP, ANP): the curves of its seeds and their selected thresholds."""
    out = {}
    for defense in g.defenses():
        cells = g.ok.get((attack, defense), [])
        curves = [c.curve for c in cells if any("threshold" in r for r in c.curve)]
        if curves:
            out[defense] = (curves, [c.selected for c in cells if c.selected is not None])
    return out


def curve_x(curve: list[dict[str, Any]]) -> str | None:
    """The parameter a curve sweeps: its first numeric column that is not a metric (FP: `fraction`, CLP: `u`)."""
    metrics = {m for m, _ in CURVE_METRICS}
    for key in dict.fromkeys(k for r in curve for k in r):
        if key not in metrics and all(isinstance(r.get(key), (int, float)) for r in curve):
            return str(key)
    return None


def other_curves(g: Group, attack: str) -> dict[str, tuple[str, list[list[dict[str, Any]]]]]:
    """Per defense whose curve is not over a mask threshold (FP, CLP): its x parameter and its seeds' curves."""
    out = {}
    for defense in g.defenses():
        curves = [c.curve for c in g.ok.get((attack, defense), []) if c.curve and "threshold" not in c.curve[0]]
        x = curve_x(curves[0]) if curves else None
        if x is not None:
            out[defense] = (x, curves)
    return out


def param_curve(path: Path, title: str, x: str, curves: list[list[dict[str, Any]]]) -> Path:
    """Clean acc, ASR and robust acc against the defense's own curve parameter (mean ± std over seeds)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (metric, label) in enumerate(CURVE_METRICS):
        xs, means, stds = mean_curve(curves, metric, x)
        ax.plot(xs, [100 * m for m in means], marker=".", color=f"C{i}", label=label)
        lo = [100 * (m - s) for m, s in zip(means, stds, strict=True)]
        ax.fill_between(xs, lo, [100 * (m + s) for m, s in zip(means, stds, strict=True)], color=f"C{i}", alpha=0.15)
    ax.set(xlabel=x, ylabel="%", title=title, ylim=(-3, 103))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _unpruned_x(per_defense: dict[str, tuple[list, list[float]]]) -> tuple[float, float]:
    """Where the unpruned model sits: one threshold step left of the smallest threshold (and that threshold)."""
    ts = sorted(
        {
            float(r["threshold"])
            for curves, _ in per_defense.values()
            for c in curves
            for r in c
            if r.get("threshold") is not None
        }
    )
    steps = [b - a for a, b in itertools.pairwise(ts)]
    step = max(min(steps) if steps else 0.05, 0.2 * (ts[-1] - ts[0]))  # room for the "unpruned" tick label
    return ts[0] - step, ts[0]


def _first_pruned(curves: list[list[dict[str, Any]]]) -> float | None:
    """Mean channels pruned at the smallest threshold: what the curve's first point already removes."""
    counts = []
    for curve in curves:
        rows = [r for r in curve if r.get("threshold") is not None and r.get("pruned") is not None]
        if rows:
            counts.append(float(min(rows, key=lambda r: float(r["threshold"]))["pruned"]))
    return statistics.fmean(counts) if counts else None


def pruning_curves(
    path: Path, title: str, per_defense: dict[str, tuple[list, list[float]]], base: dict[str, Stat | None]
) -> Path:
    """The pruning figure (`pruning_figure`) as a PNG at `path`."""
    return save_figure(pruning_figure(title, per_defense, base), path)


def pruning_figure(title: str, per_defense: dict[str, tuple[list, list[float]]], base: dict[str, Stat | None]) -> Any:
    """Clean acc, ASR and robust acc against the pruning threshold, one line per defense (mean ± std shaded).

    Dotted verticals: the thresholds the defenses selected (without test data). The smallest threshold already
    prunes channels, so the unpruned model (`base`: the backdoored model's metrics, mean ± std over seeds) is
    the leftmost point, labelled `unpruned`, and its level runs across as a dashed line (= no defense).
    """
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharex=True)
    x0, t0 = _unpruned_x(per_defense)
    for (metric, label), ax in zip(CURVE_METRICS, axes, strict=True):
        b = base.get(metric)
        for i, (defense, (curves, selected)) in enumerate(per_defense.items()):
            ts, means, stds = mean_curve(curves, metric)
            color = f"C{i}"
            first = _first_pruned(curves)
            name = defense if first is None else f"{defense} ({first:.0f} pruned at t={t0:g})"
            ax.plot(ts, [100 * m for m in means], marker=".", color=color, label=name)
            ax.fill_between(
                ts,
                [100 * (m - s) for m, s in zip(means, stds, strict=True)],
                [100 * (m + s) for m, s in zip(means, stds, strict=True)],
                color=color,
                alpha=0.15,
            )
            if b is not None and ts:  # the step from the unpruned model to the first threshold
                ax.plot([x0, ts[0]], [100 * b.mean, 100 * means[0]], color=color, linestyle="--", linewidth=0.8)
            for t in sorted(set(selected)):
                ax.axvline(t, color=color, linestyle=":", linewidth=1)
        if b is not None:
            ax.axhline(100 * b.mean, color="black", linestyle="--", linewidth=0.8, alpha=0.6, label="no defense")
            ax.errorbar([x0], [100 * b.mean], yerr=[100 * (b.std or 0.0)], fmt="*", color="black", ms=9, capsize=2)
        ax.set(xlabel="pruning threshold (mask <= t)", ylabel=f"{label} (%)", ylim=(-3, 103))
        ax.grid(alpha=0.3)
    lo, hi = axes[0].get_xlim()
    ticks = [t for t in axes[0].get_xticks() if t0 - 1e-9 <= t <= hi]
    for ax in axes:
        ax.set_xticks([x0, *ticks], ["unpruned", *(f"{t:g}" for t in ticks)])
        ax.set_xlim(min(lo, x0 - 0.02 * (hi - x0)), hi)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _yerr(stats: list[Stat]) -> list[list[float]]:
    """Error bars from each mean to its 95% t interval (zero for one seed), in percent."""
    lo = [100 * (s.mean - s.interval.lo) if s.interval else 0.0 for s in stats]
    hi = [100 * (s.interval.hi - s.mean) if s.interval else 0.0 for s in stats]
    return [lo, hi]


def clean_cost(path: Path, title: str, g: Group) -> Path | None:
    """attack=none: clean accuracy after each defense (95% t interval bars) beside the clean model's own level,
    and the natural ASR of each fixed trigger before and after each defense."""
    defenses = [d for d in [BASELINE, *g.defenses()] if g.stat(CLEAN, d, "clean_acc") is not None]
    if not defenses:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    stats = [g.stat(CLEAN, d, "clean_acc") for d in defenses]
    bars = [s for s in stats if s is not None]
    left.bar(defenses, [100 * s.mean for s in bars], yerr=_yerr(bars), capsize=4, color="tab:blue", alpha=0.8)
    left.axhline(100 * bars[0].mean, color="black", linestyle="--", linewidth=1, label=f"{BASELINE} (clean model)")
    low = min(100 * (s.interval.lo if s.interval else s.mean) for s in bars)
    left.set(ylabel="clean accuracy (%)", title="clean model: accuracy after each defense (95% t)")
    left.set_ylim(max(0.0, low - 5), 100)
    left.legend(fontsize=7)
    triggers = g.natural_attacks()
    width = 0.8 / len(defenses)
    for i, d in enumerate(defenses):
        values = [g.natural(d, a) for a in triggers]
        xs = [j + i * width for j in range(len(triggers))]
        right.bar(xs, [100 * v.mean if v else 0.0 for v in values], width, label=d)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(triggers))], triggers, rotation=30, fontsize=7)
    right.set(ylabel="natural ASR (%)", title="fixed triggers on the clean model (mean over seeds)")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def group_plots(out_dir: Path, key: Key, g: Group) -> list[Path]:
    """All plots of one (dataset, arch, setting) into `out_dir`; returns their paths."""
    if not g.ok:  # only failed cells: nothing to draw
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    names, title = key_names(key), key_title(key)
    paths = [clean_vs_asr(out_dir / f"clean_vs_asr_{file_safe(*names)}.png", title, g)]
    if g.has_clean():
        cost = clean_cost(out_dir / f"clean_model_{file_safe(*names)}.png", f"{title}: no backdoor", g)
        paths += [cost] if cost else []
    for attack in g.attacks():
        per_defense = threshold_curves(g, attack)
        if per_defense:
            path = out_dir / f"pruning_{file_safe(*names, attack)}.png"
            base = {m: g.stat(attack, BASELINE, m) for m, _ in CURVE_METRICS}
            paths.append(pruning_curves(path, f"{attack} on {title}: pruning curves", per_defense, base))
        for defense, (x, curves) in other_curves(g, attack).items():
            path = out_dir / f"curve_{file_safe(*names, attack, defense)}.png"
            paths.append(param_curve(path, f"{defense} against {attack} on {title}: curve over {x}", x, curves))
    return paths
