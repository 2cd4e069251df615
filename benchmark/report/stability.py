"""Hyper-parameter stability: how much of a defense's knob grid removes the backdoor at an affordable cost.

A defense evaluated only at its published setting can look good by luck of the pick (Abad et al., "SoK: The
Last Line of Defense", arXiv 2511.13143). `experiment=stability` sweeps each defense's decisive knobs on one
backdoored model; here a knob is any `defense.*` setting whose value differs between the ok cells of one
(dataset, arch, attack, defense). A cell passes when its ASR after the defense is <= `max_asr` and its clean
accuracy fell by at most `max_ca_cost`; the stability score is the passing fraction of the grid's cells.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.report.table import Cell, file_safe
from benchmark.run.record import flatten

MAX_ASR = 0.10
MAX_CA_COST = 0.03


@dataclass(frozen=True)
class Point:
    """One knob setting: its values (in knob order), its cells' mean ASR and cost, how many of them passed."""

    values: tuple[str, ...]
    asr: float
    cost: float
    passed: int
    cells: int


@dataclass(frozen=True)
class Stability:
    """One defense's grid on one (dataset, arch, attack): its knobs, points and score."""

    dataset: str
    arch: str
    attack: str
    defense: str
    knobs: tuple[str, ...]
    points: tuple[Point, ...]

    @property
    def cells(self) -> int:
        return sum(p.cells for p in self.points)

    @property
    def passed(self) -> int:
        return sum(p.passed for p in self.points)

    @property
    def score(self) -> float:
        return self.passed / self.cells

    def axis(self, i: int) -> list[str]:
        """The values knob `i` takes, in numeric order where they are numbers."""
        return sorted({p.values[i] for p in self.points}, key=_sort_key)


def _sort_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _defense_settings(c: Cell) -> dict[str, str]:
    """A cell's `defense.*` settings as dotted keys -> their text (JSON, quotes stripped)."""
    flat = flatten({"defense": c.config.get("defense") or {}})
    return {k: json.dumps(v, sort_keys=True).strip('"') for k, v in flat.items()}


def _knobs(settings: Sequence[dict[str, str]]) -> tuple[str, ...]:
    """Keys every cell has whose value differs between cells: the swept knobs, in config order."""
    common = [k for k in settings[0] if all(k in s for s in settings)]
    return tuple(k for k in common if len({s[k] for s in settings}) > 1)


def passes(c: Cell, max_asr: float, max_ca_cost: float) -> bool:
    """ASR after the defense within `max_asr` and clean accuracy lost (before - after) within `max_ca_cost`."""
    return c.row["after_asr"] <= max_asr and -c.row["ca_change"] <= max_ca_cost


def _point(values: tuple[str, ...], cells: list[Cell], max_asr: float, max_ca_cost: float) -> Point:
    return Point(
        values,
        statistics.fmean(c.row["after_asr"] for c in cells),
        statistics.fmean(-c.row["ca_change"] for c in cells),
        sum(passes(c, max_asr, max_ca_cost) for c in cells),
        len(cells),
    )


def stabilities(cells: Sequence[Cell], max_asr: float = MAX_ASR, max_ca_cost: float = MAX_CA_COST) -> list[Stability]:
    """Every (dataset, arch, attack, defense) whose ok cells differ in a `defense.*` setting, scored."""
    groups: dict[tuple[str, str, str, str], list[Cell]] = defaultdict(list)
    for c in cells:
        if c.ok and c.config:
            groups[tuple(str(c.row[k]) for k in ("dataset", "arch", "attack", "defense"))].append(c)
    out = []
    for (dataset, arch, attack, defense), members in sorted(groups.items()):
        settings = [_defense_settings(c) for c in members]
        knobs = _knobs(settings)
        if not knobs:
            continue
        by_values: dict[tuple[str, ...], list[Cell]] = defaultdict(list)
        for c, s in zip(members, settings, strict=True):
            by_values[tuple(s[k] for k in knobs)].append(c)
        points = tuple(_point(v, cs, max_asr, max_ca_cost) for v, cs in sorted(by_values.items()))
        out.append(Stability(dataset, arch, attack, defense, knobs, points))
    return out


HEAT_CMAP = "RdYlGn_r"  # ASR 0 green, 100 red
HATCH_WIDTH = 1.8  # points: hairline hatching vanishes when a page shows the image scaled down


def hatch_ink(rgba: Sequence[float]) -> str:
    """Hatch colour that stands out on a cell of colour `rgba`: white on dark cells, near-black on light ones."""
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.55 else "0.1"


def heatmap(path: Path, s: Stability, max_asr: float, max_ca_cost: float) -> Path | None:
    """The knob grid coloured by mean ASR, hatched and outlined where the cost exceeds its bound, each square
    labelled ASR / cost (%) and `ok` where all cells passed;
    one knob gives a strip, two a grid; more than two knobs get no picture (None). Needs matplotlib."""
    if len(s.knobs) > 2:
        return None
    from benchmark.report.plots import plt, save_figure

    with plt.rc_context({"hatch.linewidth": HATCH_WIDTH}):  # read when drawn (older matplotlib) or made (newer)
        return _draw_heatmap(plt, save_figure, path, s, max_asr, max_ca_cost)


def _draw_heatmap(
    plt: Any, save_figure: Any, path: Path, s: Stability, max_asr: float, max_ca_cost: float
) -> Path | None:
    xs = s.axis(0)
    ys = s.axis(1) if len(s.knobs) == 2 else [""]
    grid: list[list[float]] = [[float("nan")] * len(xs) for _ in ys]
    fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 2.5, 0.9 * len(ys) + 1.8))
    for p in s.points:
        i, j = (ys.index(p.values[1]) if len(s.knobs) == 2 else 0), xs.index(p.values[0])
        grid[i][j] = 100 * p.asr
        mark = "\nok" if p.passed == p.cells else ""
        ax.text(
            j,
            i,
            f"{100 * p.asr:.0f} / {100 * p.cost:.1f}{mark}",
            ha="center",
            va="center",
            fontsize=7,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
        )
        if p.cost > max_ca_cost:  # a low ASR bought with clean accuracy must not read as a green success
            ink = hatch_ink(plt.get_cmap(HEAT_CMAP)(p.asr))
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor=ink, lw=0))
            ax.add_patch(plt.Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor=ink, lw=1.5))
    image = ax.imshow(grid, cmap=HEAT_CMAP, vmin=0, vmax=100, aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax, label="ASR after (%)")
    ax.set_xticks(range(len(xs)), xs, fontsize=7)
    ax.set_yticks(range(len(ys)), ys, fontsize=7)
    ax.set_xlabel(s.knobs[0])
    ax.set_ylabel(s.knobs[1] if len(s.knobs) == 2 else "")
    ax.set_title(
        f"{s.defense} on {s.dataset}/{s.arch}/{s.attack}: stability {s.score:.2f}\n"
        f"cell: ASR / clean-acc cost (%); ok: ASR <= {100 * max_asr:g} at cost <= {100 * max_ca_cost:g}; "
        f"hatched and framed: cost > {100 * max_ca_cost:g}",
        fontsize=8,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def heatmaps(root: Path, found: Sequence[Stability], max_asr: float, max_ca_cost: float) -> dict[Stability, str]:
    """A heat-map per defense under root/plots/, as paths relative to `root` (none without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {}
    out = {}
    for s in found:
        name = file_safe("stability", s.dataset, s.arch, s.attack, s.defense) + ".png"
        path = heatmap(root / "plots" / name, s, max_asr, max_ca_cost)
        if path is not None:
            out[s] = str(path.relative_to(root))
    return out


def _knob_text(s: Stability) -> str:
    return "; ".join(f"`{k}` {', '.join(s.axis(i))}" for i, k in enumerate(s.knobs))


def stability_markdown(
    found: Sequence[Stability], images: dict[Stability, str], max_asr: float, max_ca_cost: float
) -> str:
    """results.md's stability section: one row per defense grid, its score, and its heat-map."""
    if not found:
        return ""
    lines = [
        "## Hyper-parameter stability",
        "",
        f"Each defense's knob grid on one backdoored model (`experiment=stability`): a cell passes at ASR <= "
        f"{100 * max_asr:g}% and a clean-accuracy cost (before − after) <= {100 * max_ca_cost:g} points; the "
        "stability score is the fraction of the grid's cells that pass (a defense that works only at its published "
        "setting scores low). Bounds: `hydra.callbacks.report.stability_max_asr` / `stability_max_ca_cost`, or "
        "`python -m benchmark.report DIR --stability-max-asr A --stability-max-ca-cost C`.",
        "",
        "| dataset / arch / attack | defense | knobs (values) | cells | pass | stability score | heat-map |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in found:
        image = f"![{s.defense}]({images[s]})" if s in images else "–"
        lines.append(
            f"| {s.dataset} / {s.arch} / {s.attack} | {s.defense} | {_knob_text(s)} | {s.cells} | {s.passed} | "
            f"{s.score:.2f} | {image} |"
        )
    return "\n".join(["", *lines, "", "Each knob setting's own section follows.", ""])


def stability_report(root: Path, cells: Sequence[Cell], max_asr: float, max_ca_cost: float, plots: bool) -> str:
    """Score every knob grid under `root`, draw its heat-map (when `plots`) and return results.md's section."""
    found = stabilities(cells, max_asr, max_ca_cost)
    images = heatmaps(root, found, max_asr, max_ca_cost) if plots and found else {}
    return stability_markdown(found, images, max_asr, max_ca_cost)
