"""The scale study's report: does a mask defense's effect depend on the model's size?

Reads every result.json under a sweep dir (`experiment=scale_study`, or any sweep), tells the points apart by
what the generic report's coordinates do not hold (architecture width and stem, training images, epochs), and
writes `scale.csv` (one row per cell), `scale.md` (one row per point, mean over seeds, with the seeds' range)
and `scale.png` (clean-accuracy cost and ASR after the defense against the model's parameter count).
What the study found: docs/scale_study.md.

    python -m studies.scale outputs/multirun/scale_study
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from benchmark.core.archs import build_arch
from benchmark.core.io import atomic_write_text
from benchmark.report.table import Cell, collect, to_csv

log = logging.getLogger(__name__)

# The study's target: the backdoor removed at a clean-accuracy cost like the one the RNP paper reports (under
# a point on CIFAR-10; 3 points allowed here).
MAX_ASR_AFTER = 0.10
MAX_CA_COST = 0.03

POINT_KEYS = ("arch", "width", "stem", "params", "bn_channels", "train_images", "epochs", "attack", "defense")
CELL_COLUMNS = (
    *POINT_KEYS,
    "seed",
    "ca_before",
    "asr_before",
    "ca_after",
    "asr_after",
    "ca_cost",
    "unlearn_epochs",
    "unlearn_acc_last",
    "masks_zero",
    "pruned",
    "train_seconds",
    "defense_seconds",
    "cell_seconds",
    "path",
)
MEAN_KEYS = ("ca_before", "asr_before", "ca_cost", "asr_after", "unlearn_epochs", "masks_zero", "pruned")


@cache
def parameter_count(arch: str, kwargs: tuple[tuple[str, Any], ...], channels: int, num_classes: int) -> int:
    """The model's parameter count, from its architecture (built on the CPU once per distinct spec)."""
    net = build_arch(arch, num_classes=num_classes, in_channels=channels, **dict(kwargs))
    return sum(p.numel() for p in net.parameters())


def _get(obj: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def scale_row(c: Cell) -> dict[str, Any]:
    """One cell as a point of the study: its model's size and training, and the defense's effect."""
    cfg, info, r = c.config, c.info, c.row
    kwargs = _get(cfg, "arch", "kwargs") or {}
    dataset = cfg.get("dataset") or {}
    unlearn = info.get("unlearn") if isinstance(info.get("unlearn"), dict) else {}
    accs = unlearn.get("acc_per_epoch") or [None]
    return {
        "arch": _get(cfg, "arch", "name") or r.get("arch"),
        "width": kwargs.get("width"),
        "stem": kwargs.get("stem_stride", 1),
        "params": parameter_count(
            _get(cfg, "arch", "name"),
            tuple(sorted(kwargs.items())),
            int(dataset.get("channels", 3)),
            int(dataset.get("num_classes", 10)),
        ),
        "bn_channels": info.get("total_channels"),
        "train_images": dataset.get("train_limit"),
        "epochs": _get(cfg, "train", "epochs"),
        "attack": r.get("attack"),
        "defense": r.get("defense"),
        "seed": r.get("seed"),
        "ca_before": r["before_clean_acc"],
        "asr_before": r["before_asr"],
        "ca_after": r["after_clean_acc"],
        "asr_after": r["after_asr"],
        "ca_cost": r["before_clean_acc"] - r["after_clean_acc"],
        "unlearn_epochs": unlearn.get("epochs"),
        "unlearn_acc_last": accs[-1],
        "masks_zero": _get(info, "masks_below", "0.0"),
        "pruned": info.get("pruned"),
        "train_seconds": r.get("train_seconds"),
        "defense_seconds": r.get("seconds_defense"),
        "cell_seconds": r.get("seconds_total"),
        "path": r.get("path"),
    }


@dataclass
class Point:
    """One point of the study (all its seeds)."""

    key: dict[str, Any]
    rows: list[dict[str, Any]]

    def values(self, name: str) -> list[float]:
        return [float(r[name]) for r in self.rows if isinstance(r.get(name), (int, float))]

    def mean(self, name: str) -> float | None:
        xs = self.values(name)
        return statistics.fmean(xs) if xs else None

    @property
    def held(self) -> bool | None:
        """Whether the defense met the study's target on average over the seeds (None: no defense ran)."""
        asr, cost = self.mean("asr_after"), self.mean("ca_cost")
        if asr is None or cost is None or self.key["defense"] == "none":
            return None
        return asr <= MAX_ASR_AFTER and cost <= MAX_CA_COST


def points(rows: Sequence[dict[str, Any]]) -> list[Point]:
    """Rows grouped by point, ordered by attack, defense, then model size, data and training length."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in POINT_KEYS), []).append(r)
    pts = [Point(dict(zip(POINT_KEYS, k, strict=True)), v) for k, v in groups.items()]
    return sorted(pts, key=lambda p: (p.key["attack"], p.key["defense"], p.key["params"], *_order_tail(p.key)))


def _order_tail(key: dict[str, Any]) -> tuple:
    return (key["train_images"] or 0, key["epochs"] or 0, str(key["arch"]), key["width"] or 0)


def _fmt(p: Point, name: str, digits: int = 3) -> str:
    xs = p.values(name)
    if not xs:
        return "–"
    mean = f"{statistics.fmean(xs):.{digits}f}"
    return mean if len(xs) == 1 else f"{mean} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def _model_label(key: dict[str, Any]) -> str:
    stem = f", stem {key['stem']}" if key["stem"] != 1 else ""
    return f"{key['arch']} w{key['width']}{stem}"


def markdown_table(pts: Sequence[Point]) -> str:
    """One row per point: mean over seeds, and the seeds' range in brackets."""
    head = (
        "| model | params | BN ch | train imgs | epochs | attack | defense | seeds | CA before | ASR before "
        "| CA cost | ASR after | unlearn epochs | masks at 0 | pruned (≤0.2) | train s | defense s | target met |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for p in pts:
        k = p.key
        held = {True: "yes", False: "no", None: "–"}[p.held]
        lines.append(
            f"| {_model_label(k)} | {k['params'] / 1e6:.2f}M | {k['bn_channels']} | {k['train_images']} | "
            f"{k['epochs']} | {k['attack']} | {k['defense']} | {len(p.rows)} | {_fmt(p, 'ca_before')} | "
            f"{_fmt(p, 'asr_before')} | {_fmt(p, 'ca_cost')} | {_fmt(p, 'asr_after')} | "
            f"{_fmt(p, 'unlearn_epochs', 1)} | {_fmt(p, 'masks_zero', 0)} | {_fmt(p, 'pruned', 0)} | "
            f"{_fmt(p, 'train_seconds', 0)} | {_fmt(p, 'defense_seconds', 0)} | {held} |"
        )
    return "\n".join(lines) + "\n"


def plot(path: Path, pts: Sequence[Point]) -> Path | None:
    """CA cost and ASR after against parameters (log x): one series per attack/defense/data/epochs, seeds dotted."""
    try:
        from benchmark.report.plots import _save, plt
    except ImportError:
        log.warning("matplotlib is not installed: no scale.png")
        return None
    series: dict[str, list[Point]] = {}
    for p in pts:
        if p.key["defense"] == "none":
            continue
        k = p.key
        series.setdefault(f"{k['defense']} / {k['attack']} / {k['train_images']} imgs / {k['epochs']} ep", []).append(p)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (metric, title, bound), ax in zip(
        (("ca_cost", "clean-accuracy cost", MAX_CA_COST), ("asr_after", "ASR after the defense", MAX_ASR_AFTER)),
        axes,
        strict=True,
    ):
        for label, ps in series.items():
            xs = [p.key["params"] for p in ps]
            line = ax.plot(xs, [p.mean(metric) for p in ps], marker="o", label=label)[0]
            for p in ps:
                vals = p.values(metric)
                ax.scatter([p.key["params"]] * len(vals), vals, s=10, color=line.get_color(), alpha=0.5)
            for p in ps:
                ax.annotate(_model_label(p.key), (p.key["params"], p.mean(metric)), fontsize=6, alpha=0.7)
        ax.axhline(bound, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(-0.02, 1.02)  # both are fractions: one scale for every study, the target line visible
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(title + f" (dashed: target {bound})")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def write_scale_report(root: Path) -> tuple[list[Point], list[Path]]:
    """scale.csv, scale.md and scale.png in `root`; returns the points and the files written."""
    cells = [c for c in collect(root) if c.ok]
    if not cells:
        raise FileNotFoundError(f"no complete result.json under {root}: nothing to report")
    rows = [scale_row(c) for c in cells]
    pts = points(rows)
    files = [root / "scale.csv", root / "scale.md"]
    atomic_write_text(files[0], to_csv(rows, CELL_COLUMNS))
    atomic_write_text(files[1], f"# Scale study: {len(rows)} cells, {len(pts)} points\n\n" + markdown_table(pts))
    png = plot(root / "scale.png", pts)
    return pts, files + ([png] if png else [])


class ScaleCallback(Callback):
    """Hydra callback: the scale report after each multirun (failures only logged: the cells are on disk)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(str(config.hydra.sweep.dir))
        try:
            _, files = write_scale_report(root)
            log.info("scale report: %s", ", ".join(str(f) for f in files))
        except Exception:  # the cells' results are safe on disk; say how to redo the report
            log.exception("scale report failed; rerun it with: python -m studies.scale %s", root)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.scale", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a sweep dir (e.g. outputs/multirun/scale_study)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory (expected a sweep dir with result.json files)", file=sys.stderr)
        return 2
    try:
        _, files = write_scale_report(args.root)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
