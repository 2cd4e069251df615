"""report.html: the whole sweep on one self-contained page (inline CSS/JS, plots as data URIs, no network).

Pivot tables and the table of cells sort by a click on a column header; select boxes (dataset, arch, attack,
defense) and a text box filter them. The URL query holds the state (`?attack=badnets&sort=cells.der&dir=desc`),
so a link shows the same view. Every string taken from a result file is escaped: a config value cannot inject
markup. Reads the data model of `table` (never result.json) and the PNGs that `plots` wrote.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmark.report.published import Entry, load_registry
from benchmark.report.sections import Section, group_sections
from benchmark.report.table import (
    BASELINE,
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

FILTER_KEYS = ("dataset", "arch", "attack", "defense")
METRIC_NAMES = {"clean_acc", "asr", "robust_acc"}


def esc(value: Any) -> str:
    """Text or attribute value, escaped (quotes too): the page shows result files, never runs them."""
    return html.escape("" if value is None else str(value), quote=True)


def _attrs(**data: Any) -> str:
    """` data-k="v"` for each non-None value (filter coordinates, sort values)."""
    return "".join(f' data-{k}="{esc(v)}"' for k, v in data.items() if v is not None)


def _pct(value: Any) -> str:
    return "" if not isinstance(value, (int, float)) else f"{100 * value:.1f}"


def _num(value: Any, digits: int = 1) -> str:
    return "" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def _td(text: str, sort: Any = None, cls: str = "", **data: Any) -> str:
    """A cell; `sort` (a number) is what the column sorts by, else its text."""
    sort_attr = "" if sort is None else f' data-v="{"" if sort == "" else esc(sort)}"'
    class_attr = f' class="{cls}"' if cls else ""
    return f"<td{class_attr}{sort_attr}{_attrs(**data)}>{text}</td>"


def _table(table_id: str, header: Sequence[tuple[str, str, dict[str, Any]]], rows: Iterable[str]) -> str:
    """A sortable table: header items are (key for the URL, label, data attributes of the column)."""
    ths = "".join(f'<th data-k="{esc(k)}"{_attrs(**d)} title="sort">{esc(label)}</th>' for k, label, d in header)
    body = "\n".join(rows)
    return (
        f'<table class="sortable" id="{esc(table_id)}"><thead><tr>{ths}</tr></thead><tbody>\n{body}\n</tbody></table>'
    )


def _stat_text(s: Stat | None, scale: float = 100.0, digits: int = 1) -> tuple[str, Any]:
    if s is None:
        return "–", ""
    text = f"{scale * s.mean:.{digits}f}" + (f" ± {scale * s.std:.{digits}f}" if s.std is not None else "")
    return text, round(scale * s.mean, 6)


def _pivot(
    table_id: str, g: Group, columns: Sequence[str], fmt: Callable[[str, str], tuple[str, Any, str]], first: str
) -> str:
    """Attacks down, `columns` across; `fmt(attack, defense)` gives (html, sort value, css class)."""
    header = [("attack", "attack", {}), *((d, first if d == BASELINE else d, _col(d)) for d in columns)]
    rows = []
    for a in g.attacks():
        tds = [_td(esc(a))]
        for d in columns:
            text, sort, cls = fmt(a, d)
            tds.append(_td(text, sort, cls, **_col(d)))
        rows.append(f"<tr data-f{_attrs(attack=a)}>{''.join(tds)}</tr>")
    return _table(table_id, header, rows)


def _col(defense: str) -> dict[str, Any]:
    """A defense column hides under the defense filter; the baseline column always stays."""
    return {} if defense == BASELINE else {"defense": defense, "f": ""}


def extra_section(gid: str, s: Section) -> str:
    """A report section (intervals, RNP − ANP, clean model, published) as a sortable table with its notes."""
    header = [(f"c{i}", h, {}) for i, h in enumerate(s.header)]
    rows = [f"<tr>{''.join(_td(esc(c)) for c in row)}</tr>" for row in s.rows]
    notes = "".join(f"<li>{esc(n)}</li>" for n in s.notes)
    table = _table(f"{gid}-{s.key}", header, rows)
    return f'<h3>{esc(s.title)}</h3>{table}<ul class="notes">{notes}</ul>'


def group_section(
    index: int, key: Key, g: Group, max_ca_drop: float, images: dict[str, str], entries: Sequence[Entry] = ()
) -> str:
    """One (dataset, arch): clean acc, ASR, DER (ΔCA) and seconds pivots, notes on missing bests, plots."""
    dataset, arch, _ = key
    seeds = len({c.row["seed"] for cells in g.ok.values() for c in cells})
    n_ok, n_bad = sum(map(len, g.ok.values())), sum(map(len, g.bad.values()))
    columns = [BASELINE, *g.defenses()]

    def metric(name: str) -> Callable[[str, str], tuple[str, Any, str]]:
        def fmt(a: str, d: str) -> tuple[str, Any, str]:
            text, sort = _stat_text(g.stat(a, d, name))
            failed = 0 if d == BASELINE else len(g.bad.get((a, d), []))
            text += f" ({failed} failed)" if failed else ""
            return esc(text), sort, "best" if d == best_defense(g, a, max_ca_drop) else ""

        return fmt

    def der(a: str, d: str) -> tuple[str, Any, str]:
        text, sort = _stat_text(g.stat(a, d, "der"))
        change = g.stat(a, d, "ca_change")
        loss = " loss" if change is not None and change.mean < -0.0005 else ""  # red from a 0.1 point drop
        cost = "" if change is None else f' <span class="ca{loss}">({esc(signed_points(change.mean))})</span>'
        return esc(text) + cost, sort, ""

    def seconds(a: str, d: str) -> tuple[str, Any, str]:
        if d == BASELINE:
            text, sort = _stat_text(g.stat(a, d, "backdoor_seconds"), 1.0)
            return esc(text), sort, ""
        phase, _ = _stat_text(g.stat(a, d, "seconds_defense"), 1.0)
        cell, sort = _stat_text(g.stat(a, d, "seconds_cell"), 1.0)
        return esc("–" if cell == "–" else f"{phase} / {cell}"), sort, ""

    notes = [
        f"<li data-f{_attrs(attack=a)}>{esc(a)}: no best defense: {esc(r)}.</li>"
        for a in g.attacks()
        if (r := no_best_reason(g, a, max_ca_drop))
    ]
    figures = "".join(
        f'<figure data-f{_attrs(attack=attack)}><img alt="{esc(name)}" src="{src}"><figcaption>{esc(name)}'
        "</figcaption></figure>"
        for name, (attack, src) in images.items()
    )
    gid = f"g{index}"
    parts = [
        f'<section class="group" data-f{_attrs(dataset=dataset, arch=arch)}>',
        f"<h2>{esc(key_title(key))}</h2>",
        f"<p>{n_ok} cells ok, {n_bad} failed, {seeds} seed(s). Values in %, mean ± std over seeds.</p>",
        "<h3>Clean accuracy (%)</h3>",
        _pivot(f"{gid}-ca", g, columns, metric("clean_acc"), BASELINE),
        "<h3>ASR (%)</h3>",
        _pivot(f"{gid}-asr", g, columns, metric("asr"), BASELINE),
        f'<ul class="notes">{"".join(notes)}</ul>' if notes else "",
        "<h3>DER (%), with the clean accuracy change in points (ΔCA)</h3>",
        _pivot(f"{gid}-der", g, g.defenses(), der, BASELINE),
        "<h3>Seconds: backdoor training per model; per cell, defense phase / whole cell without backdoor training</h3>",
        _pivot(f"{gid}-s", g, columns, seconds, "backdoor training"),
        *(extra_section(gid, s) for s in group_sections(g, list(entries))),
        f'<div class="plots">{figures}</div>' if figures else "",
        "</section>",
    ]
    return "\n".join(p for p in parts if p)


CELL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (row key, label, format: "text", "pct" (fraction as %), "pts" (signed points), "s" (seconds))
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
    ("seconds_defense", "defense s", "s"),
    ("seconds_cell", "cell s", "s"),
    ("backdoor_seconds", "backdoor training s", "s"),
)


def _cell_td(kind: str, value: Any) -> str:
    if kind == "text":
        return _td(esc(value))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return _td("", "")
    if kind == "pct":
        return _td(_pct(value), round(100 * value, 6))
    if kind == "pts":
        return _td(esc(signed_points(value)), round(100 * value, 6))
    return _td(_num(value, 1 if kind == "s" else 0), value)


def cells_table(cells: Sequence[Cell]) -> str:
    """Every cell, one row: coordinates (and the setting, when the cells' configs differ), status, metrics, seconds."""
    shown = CELL_COLUMNS
    if any(c.row.get("setting") for c in cells):
        shown = (*CELL_COLUMNS[:5], ("setting", "setting", "text"), *CELL_COLUMNS[5:])
    header = [(k, label, {}) for k, label, _ in shown]
    rows = []
    for c in cells:
        tds = "".join(_cell_td(kind, c.row.get(k)) for k, _, kind in shown)
        rows.append(f"<tr data-f data-text{_coords(c)}>{tds}</tr>")
    return _table("cells", header, rows)


def _coords(c: Cell) -> str:
    return _attrs(**{k: c.row.get(k) for k in FILTER_KEYS})


def _kv_table(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def _curve_table(curve: Sequence[dict[str, Any]], selected: float | None) -> str:
    """The defense's curve (metrics in %), the selected threshold's row marked."""
    keys = list(dict.fromkeys(k for r in curve for k in r))
    head = "".join(f"<th>{esc(k)}{' (%)' if k in METRIC_NAMES else ''}</th>" for k in keys)

    def fmt(k: str, v: Any) -> str:
        if k in METRIC_NAMES and isinstance(v, (int, float)):
            return _pct(v)
        return esc(f"{v:g}" if isinstance(v, float) else v)

    body = "".join(
        f"<tr{' class=best' if selected is not None and r.get('threshold') == selected else ''}>"
        + "".join(f"<td>{fmt(k, r.get(k))}</td>" for k in keys)
        + "</tr>"
        for r in curve
    )
    return f'<table class="kv"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def cell_details(c: Cell) -> str:
    """A collapsible block per cell: timings, defense info, curve, config (or the error of a failed cell)."""
    r = c.row
    headline = f"{r['path']} — {r['status']}"
    if c.ok:
        headline += f" — CA {_pct(r.get('after_clean_acc'))} %, ASR {_pct(r.get('after_asr'))} %"
    parts = [f"<details data-f{_coords(c)}><summary>{esc(headline)}</summary>"]
    if not c.ok:
        parts.append(f"<pre>{esc(r['error'])}</pre>")
    else:
        timing = [(k, v) for k, v in r.items() if "seconds" in k and v is not None]
        parts += ["<h4>Seconds</h4>", _kv_table(timing)]
        if c.info:
            parts += ["<h4>Defense info</h4>", f"<pre>{esc(json.dumps(c.info, indent=1, default=str))}</pre>"]
        if c.curve:
            parts += [f"<h4>Curve (selected threshold: {esc(c.selected)})</h4>", _curve_table(c.curve, c.selected)]
    if c.config:
        parts += ["<h4>Config</h4>", f"<pre>{esc(json.dumps(c.config, indent=1, default=str))}</pre>"]
    return "".join(parts) + "</details>"


def failed_section(cells: Sequence[Cell]) -> str:
    bad = [c for c in cells if not c.ok]
    if not bad:
        return ""
    rows = [
        f"<tr data-f data-text{_coords(c)}><td>{esc(c.row['path'])}</td><td>{esc(c.row['status'])}</td>"
        f"<td><pre>{esc(c.row['error'])}</pre></td></tr>"
        for c in bad
    ]
    table = _table("failed", [("path", "cell", {}), ("status", "status", {}), ("error", "error", {})], rows)
    return f'<section id="failed-cells"><h2>Failed or invalid cells ({len(bad)})</h2>{table}</section>'


def filter_bar(cells: Sequence[Cell]) -> str:
    """Select boxes with every value found, and a text filter on the cell rows and details."""
    boxes = []
    for k in FILTER_KEYS:
        values = sorted({str(c.row.get(k)) for c in cells if c.row.get(k) is not None})
        options = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
        boxes.append(
            f'<label>{k} <select id="f-{k}" name="{k}"><option value="">all</option>{options}</select></label>'
        )
    text = '<label>text <input id="f-q" name="q" type="search" placeholder="filter cells"></label>'
    return (
        f'<form id="filters" onsubmit="return false">{"".join(boxes)}{text}<button type="reset">reset</button></form>'
    )


def _images(root: Path, keyed: Sequence[str]) -> dict[str, tuple[str | None, str]]:
    """Plot name -> (its attack for the filter, or None; PNG as a data URI)."""
    out = {}
    for rel in keyed:
        path = root / rel
        if not path.is_file():
            continue
        uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        out[path.stem] = (None, uri)
    return out


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
    sections = []
    for i, (key, g) in enumerate(groups.items()):
        images = _images(root, plots.get(key, []))
        for attack in g.attacks():  # a pruning plot shows one attack: the attack filter hides the others
            name = f"pruning_{file_safe(*key, attack)}"
            if name in images:
                images[name] = (attack, images[name][1])
        sections.append(group_section(i, key, g, max_ca_drop, images, entries))
    n_bad = sum(not c.ok for c in cells)
    title = f"Sweep results: {root.name}"
    body = [
        f"<h1>{esc(title)}</h1>",
        f"<p>{len(cells)} cells under <code>{esc(root)}</code>: {len(cells) - n_bad} ok, {n_bad} failed or invalid."
        ' <a href="#cells-section">cells</a> · <a href="#details">details</a>'
        + (' · <a href="#failed-cells">failures</a>' if n_bad else "")
        + "</p>",
        _definitions(max_ca_drop),
        filter_bar(cells),
        *sections,
        '<section id="cells-section"><h2>Cells</h2>',
        cells_table(cells),
        "</section>",
        f'<section id="details"><h2>Cell details</h2>{"".join(cell_details(c) for c in cells)}</section>',
        failed_section(cells),
    ]
    return PAGE.format(title=esc(title), css=CSS, body="\n".join(b for b in body if b), js=JS)


def _definitions(max_ca_drop: float) -> str:
    return (
        "<details open><summary>How to read</summary><p>"
        f"<b>{esc(BASELINE)}</b> is the backdoored model before any defense (every cell's <code>before</code>). "
        "Values are mean ± sample standard deviation over seeds, in percent. <b>Bold</b>: the best defense of the "
        "row, the lowest mean ASR among the defenses whose mean clean accuracy is at most "
        f"{100 * max_ca_drop:.1f} points below {esc(BASELINE)} (ties to the higher clean accuracy); when none "
        "qualifies, the reason is listed under the ASR pivot. DER = (max(0, ΔASR) − max(0, ΔCA) + 1) / 2, shown with "
        "the clean accuracy change after − before in points. Seconds: backdoor training (and the attack's "
        "preparation) once per model; a cell's seconds leave it out even when that cell trained the model. "
        "Intervals are two-sided 95% Student t intervals of the mean over seeds (df = n − 1; none for one seed). "
        "RNP − ANP is paired by seed: both defenses on the same backdoored model, then the mean difference and its "
        "t interval. The clean model (attack=none) has its own tables: what each defense costs with no backdoor, "
        "and the natural ASR of fixed triggers. Published numbers are compared only where every setting matches; "
        "otherwise the settings that differ are named. "
        "Click a column header to sort; the URL keeps the sort and the filters.</p></details>"
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{title}</title><style>{css}</style></head>
<body>
{body}
<script>{js}</script>
</body></html>
"""

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1500px}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.3em 0}th,td{border:1px solid #ddd;padding:2px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}thead th{background:#f2f2f2}
table.sortable thead th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td.best,tr.best td{font-weight:bold;background:#e8f5e9}.ca{color:#666}.ca.loss{color:#a33}
table.kv td,table.kv th,#failed td,#failed th{text-align:left}ul.notes{color:#8a5a00}
#filters{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ccc;z-index:2}
#filters label{margin-right:1em}.plots img{max-width:100%}figure{margin:.5em 0}
details{margin:.2em 0}summary{cursor:pointer}pre{white-space:pre-wrap;margin:0;font-size:12px}
[hidden]{display:none!important}
"""

JS = """
(() => {
  const keys = ["dataset", "arch", "attack", "defense"];
  const all = (s, r = document) => Array.from(r.querySelectorAll(s));
  const box = (k) => document.getElementById("f-" + k);
  let sorted = null;  // [table id, column key, "asc" | "desc"]
  function value(td) {
    if (!td) return null;
    if (td.dataset.v === undefined) return td.textContent.trim().toLowerCase();
    return td.dataset.v === "" ? null : parseFloat(td.dataset.v);
  }
  function sortTable(table, k, dir) {
    const ths = all("thead th", table), i = ths.findIndex((th) => th.dataset.k === k);
    if (i < 0) return false;
    const body = table.tBodies[0], sign = dir === "desc" ? -1 : 1;
    const rows = Array.from(body.rows).map((r) => [value(r.cells[i]), r]);
    const order = (x, y) => (x === null || y === null ? (x === null) - (y === null) : x < y ? -sign : +(x > y) * sign);
    rows.sort(([x], [y]) => order(x, y));
    rows.forEach(([, r]) => body.appendChild(r));
    ths.forEach((th) => th.removeAttribute("aria-sort"));
    ths[i].setAttribute("aria-sort", dir === "desc" ? "descending" : "ascending");
    sorted = [table.id, k, dir];
    return true;
  }
  function filter() {
    const sel = {};
    keys.forEach((k) => { sel[k] = box(k).value; });
    const q = box("q").value.trim().toLowerCase();
    all("[data-f]").forEach((el) => {
      let show = keys.every((k) => !sel[k] || el.dataset[k] === undefined || el.dataset[k] === sel[k]);
      const text = el.tagName === "DETAILS" ? el.querySelector("summary") : el.dataset.text !== undefined ? el : null;
      if (show && q && text) show = text.textContent.toLowerCase().includes(q);
      el.hidden = !show;
    });
  }
  function saveUrl() {
    const p = new URLSearchParams();
    keys.concat(["q"]).forEach((k) => { if (box(k).value) p.set(k, box(k).value); });
    if (sorted) { p.set("sort", sorted[0] + "." + sorted[1]); p.set("dir", sorted[2]); }
    try { history.replaceState(null, "", p.toString() ? "?" + p : location.pathname); } catch (e) { /* file: URLs */ }
  }
  function fromUrl() {
    const p = new URLSearchParams(location.search);
    keys.concat(["q"]).forEach((k) => {
      const v = p.get(k);
      if (v !== null && (k === "q" || Array.from(box(k).options).some((o) => o.value === v))) box(k).value = v;
    });
    filter();
    const s = p.get("sort"), dot = s ? s.indexOf(".") : -1;
    const table = dot > 0 ? document.getElementById(s.slice(0, dot)) : null;
    const dir = p.get("dir") === "desc" ? "desc" : "asc";
    if (table && table.classList.contains("sortable")) sortTable(table, s.slice(dot + 1), dir);
  }
  all("table.sortable thead th").forEach((th) => th.addEventListener("click", () => {
    const table = th.closest("table");
    sortTable(table, th.dataset.k, th.getAttribute("aria-sort") === "ascending" ? "desc" : "asc");
    saveUrl();
  }));
  const form = document.getElementById("filters");
  form.addEventListener("input", () => { filter(); saveUrl(); });
  form.addEventListener("reset", () => setTimeout(() => { filter(); saveUrl(); }));
  fromUrl();
})();
"""
