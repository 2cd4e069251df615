"""The report's data model: every cell under a sweep dir as a row, grouped per (dataset, arch), with stats.

The Markdown writer, the plots and the CSV files all read this model; none of them reads result.json.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.report.schema import NO_DIGEST, load_json, type_problems
from benchmark.report.stats import Interval, Paired, t_interval
from benchmark.run.key import CELL_FIELDS, CELL_GROUPS, CellKey
from benchmark.run.record import METRIC_KEYS, comparable, flatten, result_problems

CLEAN = "none"  # the attack option of the clean model (attacks/none.py): its own section, not a pivot row
NO_DEFENSE = "none"  # the defense option that leaves the model as it is: it has no DER
BASELINE = "no defense"  # the column built from every cell's `before` metrics (the backdoored model itself)
FIRST_DEFENSES = ("rnp", "anp")  # shown first, side by side; the others follow alphabetically
PHASES = ("data", "model", "evaluate", "defense", "curve", "total")
REMOVED_ASR = 0.10  # "removed": a defense is highlighted only when its mean ASR after is at most this
PREMISE_NOTE = (
    "Premise: whether the defense's mechanism worked in the cell, judged from the signals it recorded "
    '(benchmark/core/premise.py): "held"; "failed k/n: <reason>" when it did not in k of n seeds, so the '
    'number beside it is not that mechanism at work (e.g. RNP\'s mask recovery stayed at chance); "n/a": no rule. '
    'A premise is not the outcome: "held" beside a high ASR means the mechanism ran as it should and still left '
    "this backdoor (e.g. fine-tuning kept fitting the clean data, and the trigger survived it)."
)


@dataclass
class Cell:
    """One cell as the report sees it: a CSV row, its curve and selected threshold for the plots, and the
    config and defense info (without the curve) for the HTML page's per-cell details."""

    row: dict[str, Any]
    curve: list[dict[str, Any]] = field(default_factory=list)
    selected: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    natural: dict[str, Any] = field(default_factory=dict)  # result.json's natural_asr (attack=none cells)
    model_sha256: str | None = None
    notes: list[str] = field(default_factory=list)  # what results.md should say about this file (no digest)

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"


def _cell_files(root: Path) -> Iterable[Path]:
    """result.json and failed.json files under `root`, skipping hidden dirs (.submitit, .locks) and wandb/."""
    for path in sorted(root.rglob("*.json")):
        if path.name not in ("result.json", "failed.json"):
            continue
        parts = path.relative_to(root).parts[:-1]
        if any(p.startswith(".") or p == "wandb" for p in parts):
            continue
        yield path


def _base_row(root: Path, path: Path, cell: Any) -> dict[str, Any]:
    if not isinstance(cell, dict) or any(cell.get(k) is None for k in CELL_FIELDS):
        spelt = CellKey.from_subdir(path.parent.relative_to(root))
        cell = {**(spelt.as_dict() if spelt else {}), **(cell if isinstance(cell, dict) else {})}
    row: dict[str, Any] = {k: cell.get(k) for k in CELL_FIELDS}
    return {**row, "status": "", "error": "", "path": str(path.parent.relative_to(root))}


def read_cell(root: Path, path: Path) -> Cell:
    """A Cell from one file; an unreadable or incomplete result.json becomes an `invalid` row."""
    try:
        obj = load_json(path)
    except (OSError, ValueError, RecursionError) as exc:
        return Cell({**_base_row(root, path, None), "status": "invalid", "error": f"unreadable: {exc}"})
    row = _base_row(root, path, obj.get("cell") if isinstance(obj, dict) else None)
    if path.name == "failed.json":
        error = obj.get("error", "unknown error") if isinstance(obj, dict) else "unreadable failed.json"
        config = obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else {}
        return Cell({**row, "status": "failed", "error": str(error)}, config=config)
    problems = result_problems(obj) + (type_problems(obj) if isinstance(obj, dict) else [])
    if problems:
        return Cell({**row, "status": "invalid", "error": "; ".join(problems)})
    row.update(status="ok", model_source=obj.get("model_source"))
    for phase in ("before", "after"):
        row.update({f"{phase}_{k}": obj[phase][k] for k in METRIC_KEYS})
    row["der"] = obj.get("der") if row.get("defense") != NO_DEFENSE else None  # nothing was done to rate
    row.update(premise_columns(obj))
    if row["implanted"] is False:
        row["der"] = None  # a backdoor that did not implant: nothing was removed, so no DER to rank
    row["ca_change"] = obj["after"]["clean_acc"] - obj["before"]["clean_acc"]
    row.update({f"seconds_{k}": v for k, v in obj["timing_s"].items()})
    reused = _number(obj["timing_s"].get("defense_reused"))
    if reused is not None and _number(row.get("seconds_defense")) is not None:
        row["seconds_defense"] += reused  # masks learned by another cell (reuse_learned): still this defense's cost
    row.update(_training_seconds(obj))
    info = dict(obj.get("defense_info") or {})
    curve = list(info.pop("curve", None) or [])
    config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    natural = obj.get("natural_asr") if isinstance(obj.get("natural_asr"), dict) else {}
    return Cell(
        row,
        curve=curve,
        selected=info.get("selected_threshold"),
        config=config,
        info=info,
        natural=natural,
        model_sha256=obj.get("model_sha256"),
        notes=[] if "digest" in obj else [NO_DIGEST],
    )


def premise_columns(obj: dict[str, Any]) -> dict[str, Any]:
    """A result's premise verdict and whether its backdoor implanted (None: not recorded, or the clean model)."""
    implant = obj.get("implant")
    held = implant.get("held") if isinstance(implant, dict) else None
    return {"premise": str(obj.get("premise") or ""), "implanted": held if isinstance(held, bool) else None}


def _training_seconds(obj: dict[str, Any]) -> dict[str, Any]:
    """The backdoored model's training (and attack preparation) seconds, and the cell's own seconds without them.

    `timing_s.model` includes training only when this cell trained the model (`model_source: trained`); a cell
    that loaded it from the cache or the zoo did not pay for it, so only a trained cell's total is reduced.
    """
    meta = obj.get("model_meta") if isinstance(obj.get("model_meta"), dict) else {}
    train, prepare = _number(meta.get("train_seconds")), _number(meta.get("attack_prepare_seconds"))
    backdoor = None if train is None and prepare is None else (train or 0.0) + (prepare or 0.0)
    total = _number(obj["timing_s"].get("total"))
    paid = backdoor if obj.get("model_source") == "trained" and backdoor is not None else 0.0
    cell = None if total is None else max(0.0, total - paid)
    return {
        "train_seconds": train,
        "attack_prepare_seconds": prepare,
        "backdoor_seconds": backdoor,
        "seconds_cell": cell,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def collect(root: Path) -> list[Cell]:
    """Every cell under `root` with its `setting`, sorted by its coordinates."""
    cells = [read_cell(root, p) for p in _cell_files(root)]
    assign_settings(cells)
    return sorted(cells, key=_order)


def _order(c: Cell) -> tuple:
    seed = c.row.get("seed")
    coords = (str(c.row.get(k)) for k in CELL_GROUPS)
    return (*coords, str(c.row.get("setting", "")), seed if isinstance(seed, int) else -1)


def _flat_config(c: Cell) -> dict[str, str]:
    """A cell's config as dotted keys -> JSON text, without the seed and the settings resume ignores."""
    flat = flatten(comparable(c.config))
    return {k: json.dumps(v, sort_keys=True) for k, v in flat.items() if k != "seed"}


def setting_keys(cells: Sequence[Cell], flats: Sequence[dict[str, str]]) -> list[str]:
    """Config keys whose values differ between cells of one (dataset, arch, attack, defense), seeds aside;
    `flats[i]` is `_flat_config(cells[i])` ({} for a cell without a config).

    Such cells are different experiments (a poison rate, a number of epochs), not seeds of one: the report
    must not average them. Keys only some cells have (a setting newer code added) are not differences.
    """
    by_coords: dict[tuple, list[dict[str, str]]] = defaultdict(list)
    for c, flat in zip(cells, flats, strict=True):
        if c.config:
            by_coords[tuple(str(c.row.get(k)) for k in CELL_GROUPS)].append(flat)
    keys: set[str] = set()
    for group in by_coords.values():
        common = set.intersection(*(set(f) for f in group))
        keys |= {k for k in common if len({f[k] for f in group}) > 1}
    return sorted(keys)


def assign_settings(cells: Sequence[Cell]) -> None:
    """Set each cell's row `setting`: the values of the `setting_keys` it has (`attack.poison_rate=0.05`)."""
    flats = [_flat_config(c) if c.config else {} for c in cells]  # once per cell: a JSON round trip each
    keys = setting_keys(cells, flats)
    for c, flat in zip(cells, flats, strict=True):
        c.row["setting"] = ", ".join(f"{k}={flat[k].strip(chr(34))}" for k in keys if k in flat)


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    head = [*CELL_FIELDS, *(["setting"] if any(r.get("setting") for r in rows) else []), "status", "model_source"]
    metrics = [f"{p}_{k}" for p in ("before", "after") for k in METRIC_KEYS] + ["der", "ca_change"]
    metrics += ["premise", "implanted"]
    seen = {k for r in rows for k in r}
    phases = [f"seconds_{p}" for p in (*PHASES, "cell")] + sorted(
        k for k in seen if k.startswith("seconds_") and k[8:] not in (*PHASES, "cell")
    )
    training = ["train_seconds", "attack_prepare_seconds", "backdoor_seconds"]
    return [*head, *metrics, *[p for p in phases if p in seen], *training, "error", "path"]


def rounded(key: str, value: Any) -> Any:
    """A float as the CSV shows it: seconds to 3 decimals, fractions (metrics) to 6; no float32 noise."""
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    return round(value, 3 if "seconds" in key else 6)


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: rounded(k, v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) of a metric over seeds; std is None for one seed.

    `interval`: the two-sided 95% Student t interval of the mean (df = n - 1); None for one seed.
    """

    mean: float
    std: float | None
    n: int
    interval: Interval | None = None

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat | None:
        xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not xs:
            return None
        return cls(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs), t_interval(xs))

    def pct(self) -> str:
        """In percent, one decimal: `93.4 ± 0.2`."""
        return f"{100 * self.mean:.1f}" + (f" ± {100 * self.std:.1f}" if self.std is not None else "")

    def pct_interval(self) -> str:
        """Mean with its 95% t interval, in percent: `93.4 [92.9, 93.9]` (one seed: the mean alone)."""
        return f"{100 * self.mean:.1f}" + (f" {self.interval.pct()}" if self.interval else "")


def signed_points(fraction: float) -> str:
    """A change of a fraction in percentage points with its sign: `+0.4`, `−12.3` (a true minus sign)."""
    return f"{100 * fraction:+.1f}".replace("-", "−")


Key = tuple[str, str, str]  # (dataset, arch, setting): setting "" unless the cells' configs differ (setting_keys)


def key_title(key: Key) -> str:
    """`dataset / arch`, and the setting when there is one: the heading of a group."""
    dataset, arch, setting = key
    return f"{dataset} / {arch}" + (f" ({setting})" if setting else "")


def key_names(key: Key) -> tuple[str, ...]:
    """The key's parts for a file name (`file_safe`), without an empty setting."""
    return tuple(k for k in key if k)


def file_safe(*names: str) -> str:
    """Names joined into a file name (plots/): anything but letters, digits, `_.-` becomes `-`."""
    return "_".join(re.sub(r"[^A-Za-z0-9_.-]", "-", n) for n in names)


@dataclass
class Group:
    """The cells of one (dataset, arch): per (attack, defense) the ok cells, and the failures."""

    ok: dict[tuple[str, str], list[Cell]] = field(default_factory=lambda: defaultdict(list))
    bad: dict[tuple[str, str], list[Cell]] = field(default_factory=lambda: defaultdict(list))

    def attacks(self, clean: bool = False) -> list[str]:
        """The backdoor attacks of the pivots; with `clean`, also the clean model's `none` (if it ran)."""
        names = {a for a, _ in [*self.ok, *self.bad]}
        return sorted(names if clean else names - {CLEAN})

    def has_clean(self) -> bool:
        return any(a == CLEAN for a, _ in [*self.ok, *self.bad])

    def per_seed(self, attack: str, defense: str, column: str) -> dict[int, float]:
        """seed -> a row value of the ok cells of (attack, defense); for BASELINE the `before_` value."""
        out: dict[int, float] = {}
        for (a, d), cells in self.ok.items():
            if a != attack or (defense != BASELINE and d != defense):
                continue
            for c in cells:
                value = c.row.get(f"before_{column}" if defense == BASELINE else column)
                if isinstance(value, (int, float)) and not math.isnan(value):
                    out.setdefault(c.row["seed"], float(value))
        return out

    def paired(self, attack: str, a: str, b: str, metric: str) -> Paired | None:
        """Defense `a` − defense `b` on `metric` after the defense, paired by seed (the same backdoored model)."""
        return Paired.of(self.per_seed(attack, a, f"after_{metric}"), self.per_seed(attack, b, f"after_{metric}"))

    def unpaired_models(self, attack: str, a: str, b: str) -> list[int]:
        """Seeds where the cells of `a` and `b` name different model sha256s (then the pairing is not sound)."""
        sha = {d: {c.row["seed"]: c.model_sha256 for c in self.ok.get((attack, d), [])} for d in (a, b)}
        return sorted(s for s in sha[a].keys() & sha[b].keys() if sha[a][s] and sha[b][s] and sha[a][s] != sha[b][s])

    def natural(self, defense: str, attack: str) -> Stat | None:
        """Natural ASR of `attack`'s trigger on the clean model over seeds: before any defense for BASELINE."""
        values: dict[Any, Any] = {}
        for (a, d), cells in self.ok.items():
            if a != CLEAN or (defense != BASELINE and d != defense):
                continue
            for c in cells:
                phase = c.natural.get("before" if defense == BASELINE else "after") or {}
                if attack in phase:
                    values.setdefault(c.row["seed"], phase[attack])
        return Stat.of(values.values())

    def natural_attacks(self) -> list[str]:
        """The attacks whose natural ASR the clean cells recorded, in their recorded order."""
        names: dict[str, None] = {}
        for (a, _), cells in self.ok.items():
            for c in cells if a == CLEAN else []:
                names.update(dict.fromkeys(c.natural.get("before") or {}))
        return list(names)

    def left_out(self) -> dict[str, str]:
        """Attacks without natural ASR and why, as the clean cells recorded it."""
        out: dict[str, str] = {}
        for (a, _), cells in self.ok.items():
            if a == CLEAN:
                for c in cells:
                    out.update(c.natural.get("left_out") or {})
        return dict(sorted(out.items()))

    def not_implanted(self, attack: str) -> list[int]:
        """Seeds whose backdoored model of `attack` missed the implant bar (result.json `implant.held` false)."""
        return sorted(
            {
                c.row["seed"]
                for (a, _), cells in self.ok.items()
                if a == attack
                for c in cells
                if c.row.get("implanted") is False
            }
        )

    def premise(self, attack: str, defense: str) -> str:
        """The premise over seeds: `held`, `n/a`, or `failed k/n: <first reason>`; `–` when none was recorded."""
        verdicts = [str(c.row.get("premise") or "") for c in self.ok.get((attack, defense), [])]
        shown = [v for v in verdicts if v]
        if not shown:
            return "–"
        failed = [v for v in shown if v.startswith("failed")]
        if not failed:
            return "/".join(sorted(set(shown)))
        return f"failed {len(failed)}/{len(shown)}: {failed[0].removeprefix('failed: ')}"

    def pruned(self, attack: str, defense: str) -> Stat | None:
        """Channels pruned (defense_info `pruned`, RNP/ANP/CLP...) over seeds; None for defenses that prune none."""
        return Stat.of(c.info.get("pruned") for c in self.ok.get((attack, defense), []) if "pruned" in c.info)

    def defenses(self) -> list[str]:
        """Defense columns: RNP and ANP first (side by side), then the rest; `none` is the baseline column."""
        names = {d for _, d in [*self.ok, *self.bad]} - {"none"}
        return [d for d in FIRST_DEFENSES if d in names] + sorted(names - set(FIRST_DEFENSES))

    def stat(self, attack: str, defense: str, metric: str) -> Stat | None:
        """`after_<metric>` over the seeds of (attack, defense); for BASELINE, `before_<metric>` per seed."""
        if defense == BASELINE:
            per_seed: dict[Any, Any] = {}
            for (a, _), cells in self.ok.items():
                if a == attack:
                    for c in cells:  # every defense cell of a seed starts from the same model
                        per_seed.setdefault(c.row["seed"], c.row.get(f"before_{metric}", c.row.get(metric)))
            return Stat.of(per_seed.values())
        column = f"after_{metric}" if metric in METRIC_KEYS else metric
        return Stat.of(c.row.get(column) for c in self.ok.get((attack, defense), []))


def group_cells(cells: Iterable[Cell]) -> dict[Key, Group]:
    groups: dict[Key, Group] = defaultdict(Group)
    for c in cells:
        key = (str(c.row["dataset"]), str(c.row["arch"]), str(c.row.get("setting", "")))
        (groups[key].ok if c.ok else groups[key].bad)[(str(c.row["attack"]), str(c.row["defense"]))].append(c)
    return dict(sorted(groups.items()))


def best_defense(group: Group, attack: str, max_ca_drop: float) -> str | None:
    """The lowest mean ASR among defenses that removed the backdoor (mean ASR <= REMOVED_ASR) at a mean clean
    accuracy at most `max_ca_drop` below the baseline.

    Ties go to the higher clean accuracy. None when there is no baseline, a seed's backdoor did not implant
    (nothing to remove), or no defense qualifies: a defense that leaves ASR high is never the best.
    """
    base = group.stat(attack, BASELINE, "clean_acc")
    if base is None or group.not_implanted(attack):
        return None
    candidates = [(asr, -ca, d) for d, ca, asr in _within_budget(group, attack, base.mean, max_ca_drop)]
    return min(candidates)[2] if candidates and min(candidates)[0] <= REMOVED_ASR + 1e-12 else None


def _within_budget(group: Group, attack: str, base: float, max_ca_drop: float) -> list[tuple[str, float, float]]:
    return [(d, ca, asr) for d, ca, asr in _defense_means(group, attack) if base - ca <= max_ca_drop + 1e-12]


def _defense_means(group: Group, attack: str) -> list[tuple[str, float, float]]:
    """(defense, mean clean acc, mean ASR) of each defense of `attack` that has both."""
    out = []
    for d in group.defenses():
        ca, asr = group.stat(attack, d, "clean_acc"), group.stat(attack, d, "asr")
        if ca is not None and asr is not None:
            out.append((d, ca.mean, asr.mean))
    return out


def no_best_reason(group: Group, attack: str, max_ca_drop: float) -> str | None:
    """Why `best_defense` is None for `attack` (None when there is a best defense): shown under the pivot."""
    if best_defense(group, attack, max_ca_drop) is not None:
        return None
    base = group.stat(attack, BASELINE, "clean_acc")
    if base is None:
        return "no baseline: no cell of this attack finished, so there is no backdoored model to compare with"
    if seeds := group.not_implanted(attack):
        return (
            f"the backdoor did not implant in seed(s) {', '.join(map(str, seeds))} (ASR before below the implant "
            "bar, eval.implant_bar): nothing to remove, so no defense is ranked and those cells have no DER"
        )
    means = _defense_means(group, attack)
    if not means:
        return "no defense finished on this attack"
    if kept := _within_budget(group, attack, base.mean, max_ca_drop):
        d, _, asr = min(kept, key=lambda m: m[2])
        return (
            f"no defense within the clean-accuracy budget removed the backdoor (mean ASR <= "
            f"{100 * REMOVED_ASR:.0f}%); the lowest, {d}, leaves {100 * asr:.1f}%"
        )
    d, ca, _ = max(means, key=lambda m: m[1])
    return (
        f"no defense within {100 * max_ca_drop:.1f} points of the baseline's clean accuracy "
        f"({100 * base.mean:.1f}); the closest, {d}, loses {100 * (base.mean - ca):.1f}"
    )


def summary_rows(groups: dict[Key, Group]) -> list[dict[str, Any]]:
    """One row per (dataset, arch, attack, defense) incl. the baseline: n, failures, mean/std of each metric."""
    rows = []
    for (dataset, arch, setting), g in groups.items():
        for attack in g.attacks(clean=True):
            for defense in [BASELINE, *g.defenses()]:
                row: dict[str, Any] = {"dataset": dataset, "arch": arch, "attack": attack, "defense": defense}
                row.update({"setting": setting} if setting else {})
                row["failed"] = 0 if defense == BASELINE else len(g.bad.get((attack, defense), []))
                row["premise"] = "" if defense == BASELINE else g.premise(attack, defense)
                row["not_implanted_seeds"] = len(g.not_implanted(attack))
                metrics = [*METRIC_KEYS] + (
                    ["backdoor_seconds"]
                    if defense == BASELINE
                    else ["der", "ca_change", "seconds_defense", "seconds_cell"]
                )
                for m in metrics:
                    s = g.stat(attack, defense, m)
                    row["n"] = max(row.get("n", 0), s.n if s else 0)
                    row[f"{m}_mean"] = rounded(m, s.mean) if s else None
                    row[f"{m}_std"] = rounded(m, s.std) if s and s.std is not None else None
                    row[f"{m}_ci95_lo"] = rounded(m, s.interval.lo) if s and s.interval else None
                    row[f"{m}_ci95_hi"] = rounded(m, s.interval.hi) if s and s.interval else None
                rows.append(row)
    return rows
