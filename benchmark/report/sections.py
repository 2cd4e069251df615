"""The report's tables beyond the pivots, as plain rows both writers render (results.md and report.html):
95% intervals, RNP − ANP paired by seed, the clean model's section, and published numbers beside ours."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.report.published import Entry, matches
from benchmark.report.stats import Paired
from benchmark.report.table import BASELINE, CLEAN, FIRST_DEFENSES, Group, Stat, signed_points

T_NOTE = "two-sided 95% Student t interval of the mean over seeds, t(0.975, n − 1) · s / √n; none for one seed"


@dataclass
class Section:
    """A titled table (header + rows of text) with notes under it; `key` names it for the HTML page."""

    key: str
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def _std(s: Stat | None) -> str:
    return "–" if s is None else s.pct()


def _interval(s: Stat | None) -> str:
    if s is None:
        return "–"
    return s.interval.pct() if s.interval else "n=1"


def interval_section(g: Group) -> Section | None:
    """Per attack and defense: the 95% t interval of the mean clean accuracy / ASR; none when no cell has two seeds."""
    columns = [BASELINE, *g.defenses()]
    stats = [g.stat(a, d, m) for a in g.attacks() for d in columns for m in ("clean_acc", "asr")]
    if not any(s is not None and s.n >= 2 for s in stats):
        return None
    rows = [
        [a, *(f"{_interval(g.stat(a, d, 'clean_acc'))} / {_interval(g.stat(a, d, 'asr'))}" for d in columns)]
        for a in g.attacks()
    ]
    return Section(
        "intervals", "Clean accuracy / ASR: 95% intervals over seeds (%)", ["attack", *columns], rows, [T_NOTE]
    )


def _paired_text(p: Paired | None) -> str:
    return "–" if p is None else p.points()


def paired_section(g: Group) -> Section | None:
    """RNP − ANP per attack over the seeds both ran (the same backdoored model per seed), in points."""
    a, b = FIRST_DEFENSES
    if not all(d in g.defenses() for d in FIRST_DEFENSES):
        return None
    rows, notes = [], []
    for attack in g.attacks(clean=True):
        ca, asr = g.paired(attack, a, b, "clean_acc"), g.paired(attack, a, b, "asr")
        if ca is None:
            continue
        label = f"{attack} (clean model)" if attack == CLEAN else attack
        rows.append([label, str(ca.n), _paired_text(ca), _paired_text(asr)])
        if bad := g.unpaired_models(attack, a, b):
            notes.append(f"{attack}: the RNP and ANP cells of seed(s) {bad} name different models: not a sound pair")
    notes.append(f"per seed RNP − ANP after the defense, then the mean and its {T_NOTE}")
    header = ["attack", "seeds", "Δ clean acc (points) [95%]", "Δ ASR (points) [95%]"]
    return Section("paired", "RNP − ANP, paired by seed (same backdoored model)", header, rows, notes)


def clean_sections(g: Group) -> list[Section]:
    """attack=none: each defense's cost on a model with no backdoor, and the natural ASR of fixed triggers."""
    if not g.has_clean():
        return []
    before = g.per_seed(CLEAN, BASELINE, "clean_acc")
    rows = []
    for d in [BASELINE, *(d for d in g.defenses() if (CLEAN, d) in g.ok)]:
        ca, rate = g.stat(CLEAN, d, "clean_acc"), g.stat(CLEAN, d, "asr")
        cost = "–" if d == BASELINE else _paired_text(Paired.of(g.per_seed(CLEAN, d, "after_clean_acc"), before))
        pruned = g.pruned(CLEAN, d)
        n_pruned = "–" if pruned is None else f"{pruned.mean:.1f}" + (f" ± {pruned.std:.1f}" if pruned.std else "")
        rows.append([d, _std(ca), _interval(ca), cost, _std(rate), n_pruned])
    header = [
        "defense",
        "clean acc (%)",
        "95% interval",
        "Δ clean acc vs no defense (points) [95%]",
        "target-class rate (%)",
        "channels pruned",
    ]
    notes = [
        "the clean model: same data, architecture, recipe and seed as the backdoored ones, nothing poisoned; "
        "every defense's loss of clean accuracy here is its cost alone (no backdoor to remove)",
        "target-class rate: clean non-target test images classified as the target class (the cell's `asr` "
        "with the empty trigger: the floor any ASR is read against)",
        f"Δ clean acc: per seed after − before on the same clean model; {T_NOTE}",
    ]
    cost = Section("clean-cost", "Clean model (attack=none): what each defense costs", header, rows, notes)
    columns = [BASELINE, *(d for d in g.defenses() if (CLEAN, d) in g.ok)]
    natural_rows = [[a, *(_std(g.natural(d, a)) for d in columns)] for a in g.natural_attacks()]
    left = g.left_out()
    natural_notes = [
        "each attack's test trigger applied to the clean model: the fraction of non-target images sent to the "
        f"target class, before ({BASELINE}) and after each defense; mean ± std over seeds"
    ]
    if left:
        natural_notes.append("left out: " + "; ".join(f"{a} ({why})" for a, why in left.items()))
    natural = Section(
        "natural", "Natural ASR on the clean model (%)", ["trigger", *columns], natural_rows, natural_notes
    )
    return [cost, natural]


def _pub(entry: Entry, phase: str) -> str:
    ca, asr = entry.value(phase, "clean_acc"), entry.value(phase, "asr")
    return "–" if ca is None or asr is None else f"{100 * ca:.1f} / {100 * asr:.1f}"


def _diff(ours: Stat | None, published: float | None) -> str:
    return "–" if ours is None or published is None else signed_points(ours.mean - published)


def published_section(g: Group, entries: list[Entry]) -> Section | None:
    """Every registry entry of an (attack, defense) this group ran, beside our mean; differences only on a match."""
    rows = []
    for attack in g.attacks():
        for defense in g.defenses():
            cells = g.ok.get((attack, defense), [])
            if not cells:
                continue
            for m in matches(entries, cells[0].config):
                e = m.entry
                if e.values is None and m.mismatches:
                    continue  # a table whose numbers are missing, for another setting: nothing to show
                ours_before = [g.stat(attack, BASELINE, k) for k in ("clean_acc", "asr")]
                ours_after = [g.stat(attack, defense, k) for k in ("clean_acc", "asr")]
                ours = " → ".join(
                    "–" if ca is None or asr is None else f"{100 * ca.mean:.1f} / {100 * asr.mean:.1f}"
                    for ca, asr in (ours_before, ours_after)
                )
                mismatches = "mismatches: " + ("; ".join(m.mismatches) or "none")
                if e.values is None:
                    verdict = f"not available here: {e.note}; {mismatches}"
                elif m.mismatches:
                    verdict = f"not compared: {mismatches}"
                else:
                    diffs = [
                        _diff(s, e.value(phase, k))
                        for phase, stats in (("before", ours_before), ("after", ours_after))
                        for s, k in zip(stats, ("clean_acc", "asr"), strict=True)
                    ]
                    verdict = f"ours − published: {diffs[0]} / {diffs[1]} → {diffs[2]} / {diffs[3]}; {mismatches}"
                    verdict += "".join(f"; caveat: {c}" for c in e.caveats)
                published = f"{_pub(e, 'before')} → {_pub(e, 'after')}"
                rows.append([attack, defense, f"{e.id} ({e.cite()})", published, ours, verdict])
    if not rows:
        return None
    header = ["attack", "defense", "published entry (source)", "published CA / ASR", "ours CA / ASR", "comparison"]
    notes = [
        "entries of conf/published.yaml for each attack and defense that ran on their dataset and architecture "
        "(those without numbers only where "
        "their settings match); CA / ASR in %, before → after the "
        "defense; ours: the mean over seeds. A difference is given only where every setting of the entry matches "
        "the cell's config; every comparison lists its mismatches (the settings that differ, or none)"
    ]
    return Section("published", "Published numbers beside ours", header, rows, notes)


def group_sections(g: Group, entries: list[Entry]) -> list[Section]:
    """The extra tables of one (dataset, arch), in the report's order."""
    out = [interval_section(g), paired_section(g), *clean_sections(g), published_section(g, entries)]
    return [s for s in out if s is not None]
