"""results.md: the pivots of a sweep (clean acc / ASR, DER, seconds, RNP vs ANP) and its failed cells."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmark.report.published import Entry, load_registry
from benchmark.report.sections import Section, group_sections
from benchmark.report.table import (
    BASELINE,
    FIRST_DEFENSES,
    PREMISE_NOTE,
    REMOVED_ASR,
    Cell,
    Group,
    Key,
    best_defense,
    key_title,
    no_best_reason,
    signed_points,
)


def first_line(text: str, limit: int = 300) -> str:
    """An error's first line, cut to `limit` characters, safe inside a markdown table."""
    return (text.splitlines() or [""])[0][:limit].replace("|", "\\|")


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in body]


def _ca_asr(g: Group, attack: str, defense: str, seeds: int) -> str:
    ca, asr = g.stat(attack, defense, "clean_acc"), g.stat(attack, defense, "asr")
    failed = 0 if defense == BASELINE else len(g.bad.get((attack, defense), []))
    if ca is None or asr is None:
        return f"failed ({failed})" if failed else "–"
    text = f"{ca.pct()} / {asr.pct()}"
    if ca.n < seeds:
        text += f" (n={ca.n})"
    return text + (f" ({failed} failed)" if failed else "")


def _pivot(g: Group, columns: Sequence[str], fmt: Any) -> list[str]:
    return _table(["attack", *columns], ([a, *(fmt(a, d) for d in columns)] for a in g.attacks()))


DER_TITLE = "DER (%), with the clean accuracy change in points (ΔCA)"
SECONDS_TITLE = "Seconds: backdoor training per model; per cell, defense phase / whole cell without backdoor training"


def section_markdown(s: Section) -> list[str]:
    """A section as a level-3 heading, its table and its notes (one line each)."""
    body = [[cell.replace("|", "\\|") for cell in row] for row in s.rows]
    return [f"### {s.title}", "", *_table(s.header, body), "", *(f"- {n}." for n in s.notes), ""]


def group_markdown(
    key: Key, g: Group, max_ca_drop: float, plots: Sequence[str], entries: Sequence[Entry] = ()
) -> list[str]:
    seeds = len({c.row["seed"] for cells in g.ok.values() for c in cells})
    n_ok = sum(map(len, g.ok.values()))
    n_bad = sum(map(len, g.bad.values()))
    lines = [f"## {key_title(key)}", "", f"{n_ok} cells ok, {n_bad} failed, {seeds} seed(s).", ""]
    columns = [BASELINE, *g.defenses()]

    def ca_asr(attack: str, defense: str) -> str:
        text = _ca_asr(g, attack, defense, seeds)
        return f"**{text}**" if defense == best_defense(g, attack, max_ca_drop) else text

    def stat_cell(metric: str, scale: float = 100.0) -> Any:
        def fmt(attack: str, defense: str) -> str:
            s = g.stat(attack, defense, metric)
            if s is None:
                return "–"
            return f"{scale * s.mean:.1f}" + (f" ± {scale * s.std:.1f}" if s.std is not None else "")

        return fmt

    def der_ca(attack: str, defense: str) -> str:
        der, change = stat_cell("der")(attack, defense), g.stat(attack, defense, "ca_change")
        return der if change is None else f"{der} ({signed_points(change.mean)})"

    def seconds(attack: str, defense: str) -> str:
        if defense == BASELINE:  # the backdoored model's training, once per seed (cached for every cell)
            return stat_cell("backdoor_seconds", 1)(attack, defense)
        phase, cell = stat_cell("seconds_defense", 1)(attack, defense), stat_cell("seconds_cell", 1)(attack, defense)
        return "–" if cell == "–" else f"{phase} / {cell}"

    runtime = _pivot(g, [BASELINE, *g.defenses()], seconds)
    runtime[0] = runtime[0].replace(f"| {BASELINE} |", "| backdoor training |", 1)
    notes = [f"- {a}: no best defense: {r}." for a in g.attacks() if (r := no_best_reason(g, a, max_ca_drop))]
    lines += ["### Clean accuracy / ASR (%)", "", *_pivot(g, columns, ca_asr), "", *notes, *([""] if notes else [])]
    lines += [f"### {DER_TITLE}", "", *_pivot(g, g.defenses(), der_ca), ""]
    lines += premise_markdown(g)
    lines += [f"### {SECONDS_TITLE}", "", *runtime, ""]
    if all(d in g.defenses() for d in FIRST_DEFENSES):
        lines += ["### RNP vs ANP", ""]
        header = ["attack", "clean acc RNP", "clean acc ANP", "ASR RNP", "ASR ANP", "DER RNP", "DER ANP"]
        body = [
            [a] + [stat_cell(m)(a, d) for m in ("clean_acc", "asr", "der") for d in FIRST_DEFENSES] for a in g.attacks()
        ]
        lines += [*_table(header, body), ""]
    for section in group_sections(g, list(entries)):
        lines += section_markdown(section)
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return [*lines, ""] if plots else lines


def premise_markdown(g: Group) -> list[str]:
    """The premise pivot (attacks down, defenses across) and how to read it."""
    body = [[a, *(g.premise(a, d).replace("|", "\\|") for d in g.defenses())] for a in g.attacks()]
    return ["### Premise", "", PREMISE_NOTE, "", *_table(["attack", *g.defenses()], body), ""]


def markdown(
    root: Path,
    cells: Sequence[Cell],
    groups: dict[Key, Group],
    max_ca_drop: float,
    plots: dict[Key, list[str]],
    entries: Sequence[Entry] | None = None,
    preface: str = "",
) -> str:
    """results.md: a header that defines every number, then one section per (dataset, arch), then failures.

    `entries`: the published numbers to show beside ours (default: conf/published.yaml). `preface`: a section
    placed before the per-setting ones (a knob sweep's stability table, which sums them up)."""
    entries = load_registry() if entries is None else entries
    lines = [
        f"# Sweep results: {root.name}",
        "",
        f"{len(cells)} cells under `{root}`: {sum(c.ok for c in cells)} ok, "
        f"{sum(not c.ok for c in cells)} failed or invalid.",
        "",
        "Values are mean ± sample standard deviation (n - 1) over seeds, in percent; `(n=k)` marks a cell with",
        f"fewer seeds than the rest. `{BASELINE}` is the backdoored model before any defense (every cell's",
        "`before`). **Bold**: the best defense of the row = the lowest mean ASR among the defenses that",
        f"removed the backdoor (mean ASR <= {100 * REMOVED_ASR:.0f}%) with a mean clean accuracy at most",
        f"{100 * max_ca_drop:.1f} points below `{BASELINE}`; ties go to the higher clean accuracy; no bold when",
        "none qualifies, or when a seed's backdoor did not implant (ASR before below `eval.implant_bar`); the",
        "reason is noted under the pivot.",
        "DER = (max(0, ΔASR) − max(0, ΔCA) + 1) / 2, shown with the mean clean accuracy change after − before in",
        "points: a high DER can hide a large loss of clean accuracy. Seconds: backdoor training (+ the attack's",
        "preparation) once per model, from its training record whichever cell trained it; a cell's seconds leave",
        "it out even when that cell trained the model (`model_source: trained`). A defense's seconds include",
        "the mask learning it reused from another cell (`reuse_learned`, `timing_s.defense_reused`).",
        "Intervals: two-sided 95% Student t intervals of the mean over seeds (df = n − 1; none for one seed).",
        "RNP − ANP: per seed, the two defenses on the same backdoored model, then the mean difference and its t",
        "interval. `none` (the clean model, attack=none) has its own section: each defense's cost with no backdoor.",
        "",
    ]
    if preface:
        lines += [preface.strip("\n"), ""]
    for key, g in groups.items():
        lines += group_markdown(key, g, max_ca_drop, plots.get(key, []), entries)
    bad = [c for c in cells if not c.ok]
    if bad:
        lines += ["## Failed or invalid cells", ""]
        body = [[c.row["path"], c.row["status"], first_line(c.row["error"])] for c in bad]
        lines += _table(["cell", "status", "error"], body)
    return "\n".join(lines).rstrip() + "\n"
