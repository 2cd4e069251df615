"""report.html: the whole sweep on one self-contained page (inline CSS/JS, plots as data URIs, no network).

Pivot tables and the table of cells sort by a click on a column header; select boxes (dataset, arch, attack,
defense) and a text box filter them. The URL query holds the state (`?attack=badnets&sort=cells.der&dir=desc`),
so a link shows the same view. Reads the data model of `table` (never result.json) and the PNGs that `plots`
wrote.

This module only prepares what the page shows, as plain values; the markup, CSS and script live in
`templates/report.html.j2`. Jinja2 autoescapes every value: a string from a result file (a config value, an
error) is shown as text and cannot inject markup.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2

from benchmark.report.published import Entry, load_registry
from benchmark.report.sections import Section, group_sections
from benchmark.report.table import (
    BASELINE,
    PREMISE_NOTE,
    REMOVED_ASR,
    Cell,
    Group,
    Key,
    Stat,
    best_defense,
    file_safe,
    key_title,
    no_best_reason,
    signed_points,
)
from benchmark.run.key import CELL_GROUPS

METRIC_NAMES = {"clean_acc", "asr", "robust_acc"}
Data = dict[str, Any]  # data-* attributes of an element (a None value leaves its attribute out)
Images = dict[str, tuple[str | None, str]]  # plot name -> (its attack for the filter, or None; PNG as a data URI)


@dataclass(frozen=True)
class Th:
    """A sortable column's header: `key` names it in the URL (`sort=<table>.<key>`)."""

    key: str
    label: str
    data: Data = field(default_factory=dict)


@dataclass(frozen=True)
class Td:
    """A table cell. `sort`: the number its column sorts by ("" for none, sorted last); None sorts by its text.
    `change`: the clean accuracy change shown after a DER value (`loss`: a drop, in red)."""

    text: str
    sort: float | str | None = None
    cls: str = ""
    data: Data = field(default_factory=dict)
    change: str = ""
    loss: bool = False
    pre: bool = False


@dataclass(frozen=True)
class Row:
    """A table row: `filtered` rows hide under the filters by their `data`; `searchable` ones under the text box."""

    cells: list[Td]
    data: Data = field(default_factory=dict)
    filtered: bool = False
    searchable: bool = False


@dataclass(frozen=True)
class Table:
    """A sortable table (class `sortable`, `id` its name in the URL)."""

    id: str
    header: list[Th]
    rows: list[Row]


@dataclass(frozen=True)
class Extra:
    """A report section beyond the pivots (intervals, RNP − ANP, clean model, published) with its notes."""

    title: str
    table: Table
    notes: list[str]


@dataclass(frozen=True)
class Figure:
    """A plot as a data URI; `attack` (or None) lets the attack filter hide it."""

    name: str
    attack: str | None
    src: str


@dataclass(frozen=True)
class GroupView:
    """One (dataset, arch): its counts, the four pivots, the attacks without a best defense, sections, plots."""

    title: str
    data: Data
    n_ok: int
    n_bad: int
    seeds: int
    ca: Table
    asr: Table
    der: Table
    premise: Table
    seconds: Table
    no_best: list[tuple[str, str]]  # (attack, reason)
    extras: list[Extra]
    figures: list[Figure]


@dataclass(frozen=True)
class Curve:
    """A defense's curve: column headers and rows of shown values, the selected threshold's row marked."""

    head: list[str]
    rows: list[tuple[bool, list[str]]]  # (selected, values)


@dataclass(frozen=True)
class Details:
    """A cell's collapsible block: its error when it failed, else timings, defense info and curve; its config."""

    data: Data
    headline: str
    error: str | None
    timing: list[tuple[str, str]]
    info: list[tuple[str, str]] | None
    curve: Curve | None
    selected: str
    config: list[tuple[str, str]] | None


@dataclass(frozen=True)
class Filter:
    """A select box: every value the cells have for `key`."""

    key: str
    values: list[str]


@dataclass(frozen=True)
class Page:
    """Everything report.html shows."""

    title: str
    root: str
    n_cells: int
    n_bad: int
    baseline: str
    max_drop: str
    removed_asr: str
    premise_note: str
    filters: list[Filter]
    groups: list[GroupView]
    cells: Table
    details: list[Details]
    failed: Table | None


def _text(value: Any) -> str:
    """A value as shown: None as nothing."""
    return "" if value is None else str(value)


def _pct(value: Any) -> str:
    return "" if not isinstance(value, (int, float)) else f"{100 * value:.1f}"


def _num(value: Any, digits: int = 1) -> str:
    return "" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def _stat_text(s: Stat | None, scale: float = 100.0, digits: int = 1) -> tuple[str, float | str]:
    """`mean ± std` (scaled) and the mean to sort by; a dash and no sort value when there is no stat."""
    if s is None:
        return "–", ""
    text = f"{scale * s.mean:.{digits}f}" + (f" ± {scale * s.std:.{digits}f}" if s.std is not None else "")
    return text, round(scale * s.mean, 6)


def _col(defense: str) -> Data:
    """A defense column hides under the defense filter; the baseline column always stays."""
    return {} if defense == BASELINE else {"defense": defense, "f": ""}


def _pivot(table_id: str, g: Group, columns: Sequence[str], fmt: Callable[[str, str], Td], first: str) -> Table:
    """Attacks down, `columns` across; `fmt(attack, defense)` gives a cell (its column's data added here)."""
    header = [Th("attack", "attack"), *(Th(d, first if d == BASELINE else d, _col(d)) for d in columns)]
    rows = [
        Row([Td(a), *(replace(fmt(a, d), data=_col(d)) for d in columns)], {"attack": a}, filtered=True)
        for a in g.attacks()
    ]
    return Table(table_id, header, rows)


def _metric(g: Group, name: str, max_ca_drop: float) -> Callable[[str, str], Td]:
    """A clean accuracy or ASR pivot cell: mean ± std, the failed cells counted, the row's best defense marked."""

    def fmt(a: str, d: str) -> Td:
        text, sort = _stat_text(g.stat(a, d, name))
        failed = 0 if d == BASELINE else len(g.bad.get((a, d), []))
        text += f" ({failed} failed)" if failed else ""
        return Td(text, sort, "best" if d == best_defense(g, a, max_ca_drop) else "")

    return fmt


def _der(g: Group) -> Callable[[str, str], Td]:
    """A DER pivot cell, with the clean accuracy change in points (red from a 0.1 point drop)."""

    def fmt(a: str, d: str) -> Td:
        text, sort = _stat_text(g.stat(a, d, "der"))
        change = g.stat(a, d, "ca_change")
        if change is None:
            return Td(text, sort)
        return Td(text, sort, change=signed_points(change.mean), loss=change.mean < -0.0005)

    return fmt


def _seconds(g: Group) -> Callable[[str, str], Td]:
    """A seconds pivot cell: backdoor training for the baseline, else defense phase / whole cell."""

    def fmt(a: str, d: str) -> Td:
        if d == BASELINE:
            text, sort = _stat_text(g.stat(a, d, "backdoor_seconds"), 1.0)
            return Td(text, sort)
        phase, _ = _stat_text(g.stat(a, d, "seconds_defense"), 1.0)
        cell, sort = _stat_text(g.stat(a, d, "seconds_cell"), 1.0)
        return Td("–" if cell == "–" else f"{phase} / {cell}", sort)

    return fmt


def extra_section(gid: str, s: Section) -> Extra:
    """A report section (intervals, RNP − ANP, clean model, published) as a sortable table with its notes."""
    header = [Th(f"c{i}", h) for i, h in enumerate(s.header)]
    rows = [Row([Td(_text(c)) for c in row]) for row in s.rows]
    return Extra(s.title, Table(f"{gid}-{s.key}", header, rows), list(s.notes))


def group_view(
    index: int, key: Key, g: Group, max_ca_drop: float, images: Images, entries: Sequence[Entry]
) -> GroupView:
    """One (dataset, arch): clean acc, ASR, DER (ΔCA) and seconds pivots, notes on missing bests, plots."""
    dataset, arch, _ = key
    columns = [BASELINE, *g.defenses()]
    gid = f"g{index}"
    return GroupView(
        title=key_title(key),
        data={"dataset": dataset, "arch": arch},
        n_ok=sum(map(len, g.ok.values())),
        n_bad=sum(map(len, g.bad.values())),
        seeds=len({c.row["seed"] for cells in g.ok.values() for c in cells}),
        ca=_pivot(f"{gid}-ca", g, columns, _metric(g, "clean_acc", max_ca_drop), BASELINE),
        asr=_pivot(f"{gid}-asr", g, columns, _metric(g, "asr", max_ca_drop), BASELINE),
        der=_pivot(f"{gid}-der", g, g.defenses(), _der(g), BASELINE),
        premise=_pivot(f"{gid}-premise", g, g.defenses(), lambda a, d: Td(g.premise(a, d)), BASELINE),
        seconds=_pivot(f"{gid}-s", g, columns, _seconds(g), "backdoor training"),
        no_best=[(a, r) for a in g.attacks() if (r := no_best_reason(g, a, max_ca_drop))],
        extras=[extra_section(gid, s) for s in group_sections(g, list(entries))],
        figures=[Figure(name, attack, src) for name, (attack, src) in images.items()],
    )


CELL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (row key, label, format: "text", "num" (integer), "pct" (fraction as %), "pts" (signed points), "s" (seconds))
    ("dataset", "dataset", "text"),
    ("arch", "arch", "text"),
    ("attack", "attack", "text"),
    ("defense", "defense", "text"),
    ("seed", "seed", "num"),
    ("status", "status", "text"),
    ("model_source", "model", "text"),
    ("before_clean_acc", "CA before", "pct"),
    ("after_clean_acc", "CA after", "pct"),
    ("ca_change", "ΔCA", "pts"),
    ("before_asr", "ASR before", "pct"),
    ("after_asr", "ASR after", "pct"),
    ("after_robust_acc", "robust after", "pct"),
    ("der", "DER", "pct"),
    ("premise", "premise", "text"),
    ("implanted", "implanted", "text"),
    ("seconds_defense", "defense s", "s"),
    ("seconds_cell", "cell s", "s"),
    ("backdoor_seconds", "backdoor training s", "s"),
)


def _cell_td(kind: str, value: Any) -> Td:
    """A value of the cells table in its column's format; numbers sort by value, a missing one sorts last."""
    if kind == "text":
        return Td(_text(value))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return Td("", "")
    if kind == "pct":
        return Td(_pct(value), round(100 * value, 6))
    if kind == "pts":
        return Td(signed_points(value), round(100 * value, 6))
    return Td(_num(value, 1 if kind == "s" else 0), value)


def _coords(c: Cell) -> Data:
    return {k: c.row.get(k) for k in CELL_GROUPS}


def cells_table(cells: Sequence[Cell]) -> Table:
    """Every cell, one row: coordinates (and the setting, when the cells' configs differ), status, metrics, seconds."""
    shown = CELL_COLUMNS
    if any(c.row.get("setting") for c in cells):
        shown = (*CELL_COLUMNS[:5], ("setting", "setting", "text"), *CELL_COLUMNS[5:])
    header = [Th(k, label) for k, label, _ in shown]
    rows = [
        Row([_cell_td(kind, c.row.get(k)) for k, _, kind in shown], _coords(c), filtered=True, searchable=True)
        for c in cells
    ]
    return Table("cells", header, rows)


def _curve_value(k: str, v: Any) -> str:
    if k in METRIC_NAMES and isinstance(v, (int, float)):
        return _pct(v)
    return _text(f"{v:g}" if isinstance(v, float) else v)


def curve(rows: Sequence[dict[str, Any]], selected: float | None) -> Curve:
    """The defense's curve (metrics in %), the selected threshold's row marked."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = [f"{k} (%)" if k in METRIC_NAMES else k for k in keys]
    shown = [
        (selected is not None and r.get("threshold") == selected, [_curve_value(k, r.get(k)) for k in keys])
        for r in rows
    ]
    return Curve(head, shown)


def _leaf(value: Any) -> str:
    """A value as the details show it: floats to 6 significant digits (no float32 noise), lists inline."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_leaf(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _leaves(value: Any, prefix: str = "") -> list[str]:
    """`dotted.key=value` for every leaf under a mapping (a list of scalars is one leaf)."""
    if isinstance(value, dict) and value:
        return [x for k, v in value.items() for x in _leaves(v, f"{prefix}{k}.")]
    return [f"{prefix.rstrip('.')}={_leaf(value)}" if prefix else _leaf(value)]


def compact(value: dict[str, Any]) -> list[tuple[str, str]]:
    """A nested mapping as one row per top-level key, its leaves inline (`k=v, k=v`): a few rows, not JSON."""
    rows = []
    for key, sub in value.items():
        text = ", ".join(_leaves(sub)) if isinstance(sub, dict) and sub else _leaf(sub)
        rows.append((str(key), text))
    return rows


def cell_details(c: Cell) -> Details:
    """A collapsible block per cell: timings, defense info, curve, config (or the error of a failed cell)."""
    r = c.row
    headline = f"{r['path']} — {r['status']}"
    if c.ok:
        headline += f" — CA {_pct(r.get('after_clean_acc'))} %, ASR {_pct(r.get('after_asr'))} %"
    return Details(
        data=_coords(c),
        headline=headline,
        error=None if c.ok else _text(r["error"]),
        timing=[(k, _text(v)) for k, v in r.items() if "seconds" in k and v is not None],
        info=compact(c.info) if c.ok and c.info else None,
        curve=curve(c.curve, c.selected) if c.ok and c.curve else None,
        selected=_text(c.selected),
        config=compact(c.config) if c.config else None,
    )


def failed_table(cells: Sequence[Cell]) -> Table | None:
    """The failed or invalid cells with their errors; None when every cell is ok."""
    bad = [c for c in cells if not c.ok]
    if not bad:
        return None
    header = [Th("path", "cell"), Th("status", "status"), Th("error", "error")]
    rows = [
        Row(
            [Td(_text(c.row["path"])), Td(_text(c.row["status"])), Td(_text(c.row["error"]), pre=True)],
            _coords(c),
            filtered=True,
            searchable=True,
        )
        for c in bad
    ]
    return Table("failed", header, rows)


def filters(cells: Sequence[Cell]) -> list[Filter]:
    """A select box per filter key with every value found (the template adds the text filter)."""
    return [Filter(k, sorted({str(c.row.get(k)) for c in cells if c.row.get(k) is not None})) for k in CELL_GROUPS]


def _images(root: Path, keyed: Sequence[str]) -> Images:
    """The plots that exist, as data URIs, none tied to an attack yet."""
    out: Images = {}
    for rel in keyed:
        path = root / rel
        if not path.is_file():
            continue
        uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        out[path.stem] = (None, uri)
    return out


def _group_images(root: Path, key: Key, g: Group, plots: Sequence[str]) -> Images:
    """The group's plots; a pruning plot shows one attack, so the attack filter hides the others'."""
    images = _images(root, plots)
    for attack in g.attacks():
        name = f"pruning_{file_safe(*key, attack)}"
        if name in images:
            images[name] = (attack, images[name][1])
    return images


@functools.cache
def _template() -> jinja2.Template:
    """The page's template, loaded once; autoescaped, and an undefined name is an error rather than blank."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("benchmark.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2")


def render(page: Page) -> str:
    """The page's HTML: the template fills in `page`, escaping every value."""
    return _template().render(page=page)


def html_report(
    root: Path,
    cells: Sequence[Cell],
    groups: dict[Key, Group],
    max_ca_drop: float,
    plots: dict[Key, list[str]],
    entries: Sequence[Entry] | None = None,
) -> str:
    """The page: definitions, filters, per (dataset, arch) pivots and plots, all cells, details, failures."""
    entries = load_registry() if entries is None else entries
    views = [
        group_view(i, key, g, max_ca_drop, _group_images(root, key, g, plots.get(key, [])), entries)
        for i, (key, g) in enumerate(groups.items())
    ]
    page = Page(
        title=f"Sweep results: {root.name}",
        root=str(root),
        n_cells=len(cells),
        n_bad=sum(not c.ok for c in cells),
        baseline=BASELINE,
        max_drop=f"{100 * max_ca_drop:.1f}",
        removed_asr=f"{100 * REMOVED_ASR:.0f}",
        premise_note=PREMISE_NOTE,
        filters=filters(cells),
        groups=views,
        cells=cells_table(cells),
        details=[cell_details(c) for c in cells],
        failed=failed_table(cells),
    )
    return render(page)
