"""Published numbers (conf/published.yaml) matched against the cells of a sweep.

An entry holds the settings a published number was measured under, as config paths (`dataset.name`,
`attack.poison_rate`, `defense.prune_threshold`, ...). A cell is compared with the entries of its attack and
defense; every setting whose value differs from the cell's resolved config is named ("published at
attack.poison_rate 0.1, this cell 0.05"), and only an entry with none gets a difference (ours − published).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmark import CONF_DIR
from benchmark.core.errors import ConfigError

REGISTRY = Path(CONF_DIR) / "published.yaml"
SOURCE_KEYS = ("paper", "where", "row", "column")
MISSING = object()


@dataclass(frozen=True)
class Entry:
    """One published table cell: where it comes from, what it was measured under, and its values (or None)."""

    id: str
    source: dict[str, str]
    settings: dict[str, Any]
    values: dict[str, Any] | None
    caveats: tuple[str, ...] = ()
    note: str = ""

    @property
    def attack(self) -> str | None:
        return self.settings.get("attack.name")

    @property
    def defense(self) -> str | None:
        return self.settings.get("defense.name")

    def cite(self) -> str:
        """`paper, where, row, column` in one line."""
        return "; ".join(self.source[k] for k in SOURCE_KEYS)

    def value(self, phase: str, metric: str) -> float | None:
        v = ((self.values or {}).get(phase) or {}).get(metric)
        return float(v) if isinstance(v, (int, float)) else None


def _fraction_problems(entry_id: str, values: Any) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, dict):
        return [f"{entry_id}: values must be a mapping or null"]
    problems = []
    for phase in ("before", "after"):
        for metric, v in (values.get(phase) or {}).items():
            if metric not in ("clean_acc", "asr") or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                problems.append(
                    f"{entry_id}: values.{phase}.{metric}={v!r} is not clean_acc/asr as a fraction in [0, 1]"
                )
    return problems


def load_registry(path: Path = REGISTRY) -> list[Entry]:
    """The entries of `path`, checked: each has an id, a full source, dataset/arch/defense settings, fractions."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"published-number registry {path} cannot be read: {exc}") from None
    entries, problems, seen = [], [], set()
    for i, item in enumerate((raw or {}).get("entries") or []):
        eid = str(item.get("id", f"entry {i}"))
        source, settings = item.get("source") or {}, item.get("settings") or {}
        problems += [f"{eid}: source.{k} is missing" for k in SOURCE_KEYS if not source.get(k)]
        problems += [f"{eid}: settings.{k} is missing" for k in ("dataset.name", "arch.name", "defense.name")
                     if k not in settings]  # fmt: skip
        problems += [f"{eid}: duplicate id"] if eid in seen else []
        problems += _fraction_problems(eid, item.get("values"))
        if item.get("values") is None and not item.get("note"):
            problems.append(f"{eid}: values: null needs a note saying why")
        seen.add(eid)
        entries.append(
            Entry(eid, source, settings, item.get("values"), tuple(item.get("caveats") or ()), item.get("note", ""))
        )
    if problems:
        raise ConfigError(f"published-number registry {path}: " + "; ".join(problems))
    return entries


def lookup(config: dict[str, Any], path: str) -> Any:
    """The value at a dotted `path` of a resolved config (MISSING where the config has no such key)."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@dataclass(frozen=True)
class Match:
    """An entry beside a cell's config: the settings that differ (empty: the numbers are comparable)."""

    entry: Entry
    mismatches: list[str] = field(default_factory=list)

    @property
    def comparable(self) -> bool:
        return not self.mismatches and self.entry.values is not None


def match(entry: Entry, config: dict[str, Any]) -> Match:
    """Compare every setting of `entry` with `config`; each difference is named, published value first."""
    out = []
    for path, published in entry.settings.items():
        ours = lookup(config, path)
        if ours is MISSING or not _same(published, ours):
            shown = "(no such setting)" if ours is MISSING else ours
            out.append(f"published at {path} {published}, this cell {shown}")
    return Match(entry, out)


SCOPE = ("dataset.name",)  # an entry for another dataset does not apply at all; another arch is a named mismatch


def applies(entry: Entry, config: dict[str, Any]) -> bool:
    """Whether the entry is about this cell's dataset (its architecture and other settings may still differ)."""
    return all(p not in entry.settings or _same(entry.settings[p], lookup(config, p)) for p in SCOPE)


def entries_for(entries: list[Entry], attack: str, defense: str) -> list[Entry]:
    """The entries of this defense whose attack is this one (or unnamed: a whole table without attacks).

    None for the clean model (attack `none`): no table here has a clean-model row to compare with.
    """
    if attack == "none":
        return []
    return [e for e in entries if e.defense == defense and e.attack in (attack, None)]


def matches(entries: list[Entry], config: dict[str, Any]) -> list[Match]:
    """Every entry of the config's attack and defense, comparable ones first, then by fewest mismatches."""
    attack, defense = lookup(config, "attack.name"), lookup(config, "defense.name")
    found = [match(e, config) for e in entries_for(entries, str(attack), str(defense)) if applies(e, config)]
    return sorted(found, key=lambda m: (not m.comparable, len(m.mismatches), m.entry.id))
