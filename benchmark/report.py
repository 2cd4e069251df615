"""`python -m benchmark.report DIR`: the table and pictures of a sweep, from every cell under DIR.

Reads each `result.json` (and each `failed.json`: a cell that failed, with its error) and writes into DIR:
- `results.csv`: one row per cell: coordinates, status, before/after metrics, DER, seconds per phase;
- `summary.csv`: one row per (dataset, arch, attack, defense): mean and sample std over seeds;
- `results.md`: per (dataset, arch), a pivot with attacks down and defenses across (the no-defense
  baseline first, RNP and ANP next to each other), clean acc / ASR as mean ± std over seeds, the best
  defense of each row in bold; DER and runtime pivots; RNP vs ANP; the failed cells and their errors;
- `plots/*.png`: clean accuracy vs ASR per defense, and the pruning curves of RNP and ANP per attack.

Run automatically at the end of every multirun (`ReportCallback`, registered in conf/config.yaml).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from benchmark.io import atomic_write_text
from benchmark.record import CELL_KEYS, METRIC_KEYS, result_problems

log = logging.getLogger("benchmark.report")

BASELINE = "no defense"  # the column built from every cell's `before` metrics (the backdoored model itself)
FIRST_DEFENSES = ("rnp", "anp")  # shown first, side by side; the others follow alphabetically
PHASES = ("data", "model", "evaluate", "defense", "curve", "total")


@dataclass
class Cell:
    """One cell as the report sees it: a CSV row, plus its curve and selected threshold for the plots."""

    row: dict[str, Any]
    curve: list[dict[str, Any]] = field(default_factory=list)
    selected: float | None = None

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


def _cell_from_path(rel_dir: Path) -> dict[str, Any]:
    """The coordinates a sweep subdir spells (<dataset>/<arch>/<attack>/<defense>/seed<N>), if it is one."""
    parts = rel_dir.parts[-5:]
    if len(parts) < 5 or not parts[4].startswith("seed") or not parts[4][4:].isdigit():
        return {}
    return {**dict(zip(("dataset", "arch", "attack", "defense"), parts[:4], strict=True)), "seed": int(parts[4][4:])}


def _base_row(root: Path, path: Path, cell: Any) -> dict[str, Any]:
    if not isinstance(cell, dict) or any(cell.get(k) is None for k in CELL_KEYS):
        cell = {**_cell_from_path(path.parent.relative_to(root)), **(cell if isinstance(cell, dict) else {})}
    row: dict[str, Any] = {k: cell.get(k) for k in CELL_KEYS}
    return {**row, "status": "", "error": "", "path": str(path.parent.relative_to(root))}


def read_cell(root: Path, path: Path) -> Cell:
    """A Cell from one file; an unreadable or incomplete result.json becomes an `invalid` row."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return Cell({**_base_row(root, path, None), "status": "invalid", "error": f"unreadable: {exc}"})
    row = _base_row(root, path, obj.get("cell") if isinstance(obj, dict) else None)
    if path.name == "failed.json":
        error = obj.get("error", "unknown error") if isinstance(obj, dict) else "unreadable failed.json"
        return Cell({**row, "status": "failed", "error": str(error)})
    problems = result_problems(obj)
    if problems:
        return Cell({**row, "status": "invalid", "error": "; ".join(problems)})
    row.update(status="ok", model_source=obj.get("model_source"))
    for phase in ("before", "after"):
        row.update({f"{phase}_{k}": obj[phase][k] for k in METRIC_KEYS})
    row["der"] = obj.get("der")
    row.update({f"seconds_{k}": v for k, v in obj["timing_s"].items()})
    row["train_seconds"] = (obj.get("model_meta") or {}).get("train_seconds")
    info = obj.get("defense_info") or {}
    selected = info.get("selected_threshold")
    return Cell(row, curve=list(info.get("curve") or []), selected=selected)


def collect(root: Path) -> list[Cell]:
    """Every cell under `root`, sorted by its coordinates."""
    cells = [read_cell(root, p) for p in _cell_files(root)]
    return sorted(cells, key=_order)


def _order(c: Cell) -> tuple:
    seed = c.row.get("seed")
    return (*(str(c.row.get(k)) for k in CELL_KEYS[:4]), seed if isinstance(seed, int) else -1)


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    head = [*CELL_KEYS, "status", "model_source"]
    metrics = [f"{p}_{k}" for p in ("before", "after") for k in METRIC_KEYS] + ["der"]
    seen = {k for r in rows for k in r}
    phases = [f"seconds_{p}" for p in PHASES] + sorted(
        k for k in seen if k.startswith("seconds_") and k[8:] not in PHASES
    )
    return [*head, *metrics, *[p for p in phases if p in seen], "train_seconds", "error", "path"]


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) of a metric over seeds; std is None for one seed."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat | None:
        xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not xs:
            return None
        return cls(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))

    def pct(self) -> str:
        """In percent, one decimal: `93.4 ± 0.2`."""
        return f"{100 * self.mean:.1f}" + (f" ± {100 * self.std:.1f}" if self.std is not None else "")


Key = tuple[str, str]  # (dataset, arch)


@dataclass
class Group:
    """The cells of one (dataset, arch): per (attack, defense) the ok cells, and the failures."""

    ok: dict[tuple[str, str], list[Cell]] = field(default_factory=lambda: defaultdict(list))
    bad: dict[tuple[str, str], list[Cell]] = field(default_factory=lambda: defaultdict(list))

    def attacks(self) -> list[str]:
        return sorted({a for a, _ in [*self.ok, *self.bad]})

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
        column = metric if metric == "der" or metric.startswith("seconds_") else f"after_{metric}"
        return Stat.of(c.row.get(column) for c in self.ok.get((attack, defense), []))


def group_cells(cells: Iterable[Cell]) -> dict[Key, Group]:
    groups: dict[Key, Group] = defaultdict(Group)
    for c in cells:
        key = (str(c.row["dataset"]), str(c.row["arch"]))
        (groups[key].ok if c.ok else groups[key].bad)[(str(c.row["attack"]), str(c.row["defense"]))].append(c)
    return dict(sorted(groups.items()))


def best_defense(group: Group, attack: str, max_ca_drop: float) -> str | None:
    """The lowest mean ASR among defenses whose mean clean acc is at most `max_ca_drop` below the baseline.

    Ties go to the higher clean accuracy. None when there is no baseline or no defense qualifies.
    """
    base = group.stat(attack, BASELINE, "clean_acc")
    if base is None:
        return None
    candidates = []
    for d in group.defenses():
        ca, asr = group.stat(attack, d, "clean_acc"), group.stat(attack, d, "asr")
        if ca is not None and asr is not None and base.mean - ca.mean <= max_ca_drop + 1e-12:
            candidates.append((asr.mean, -ca.mean, d))
    return min(candidates)[2] if candidates else None


def summary_rows(groups: dict[Key, Group]) -> list[dict[str, Any]]:
    """One row per (dataset, arch, attack, defense) incl. the baseline: n, failures, mean/std of each metric."""
    rows = []
    for (dataset, arch), g in groups.items():
        for attack in g.attacks():
            for defense in [BASELINE, *g.defenses()]:
                row: dict[str, Any] = {"dataset": dataset, "arch": arch, "attack": attack, "defense": defense}
                row["failed"] = 0 if defense == BASELINE else len(g.bad.get((attack, defense), []))
                metrics = [*METRIC_KEYS] + ([] if defense == BASELINE else ["der", "seconds_defense", "seconds_total"])
                for m in metrics:
                    s = g.stat(attack, defense, m)
                    row["n"] = max(row.get("n", 0), s.n if s else 0)
                    row[f"{m}_mean"] = round(s.mean, 6) if s else None
                    row[f"{m}_std"] = round(s.std, 6) if s and s.std is not None else None
                rows.append(row)
    return rows


def _first_line(text: str, limit: int = 300) -> str:
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


def group_markdown(key: Key, g: Group, max_ca_drop: float, plots: Sequence[str]) -> list[str]:
    dataset, arch = key
    seeds = len({c.row["seed"] for cells in g.ok.values() for c in cells})
    n_ok = sum(map(len, g.ok.values()))
    n_bad = sum(map(len, g.bad.values()))
    lines = [f"## {dataset} / {arch}", "", f"{n_ok} cells ok, {n_bad} failed, {seeds} seed(s).", ""]
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

    def seconds(attack: str, defense: str) -> str:
        if defense == BASELINE:  # the backdoored model's training, once per seed (cached for every cell)
            return stat_cell("train_seconds", 1)(attack, defense)
        phase, total = stat_cell("seconds_defense", 1)(attack, defense), stat_cell("seconds_total", 1)(attack, defense)
        return "–" if total == "–" else f"{phase} / {total}"

    runtime = _pivot(g, [BASELINE, *g.defenses()], seconds)
    runtime[0] = runtime[0].replace(f"| {BASELINE} |", "| backdoor training |", 1)
    lines += ["### Clean accuracy / ASR (%)", "", *_pivot(g, columns, ca_asr), ""]
    lines += ["### DER (%)", "", *_pivot(g, g.defenses(), stat_cell("der")), ""]
    lines += ["### Seconds: backdoor training per model; per cell, defense phase / whole cell", "", *runtime, ""]
    if all(d in g.defenses() for d in FIRST_DEFENSES):
        lines += ["### RNP vs ANP", ""]
        header = ["attack", "clean acc RNP", "clean acc ANP", "ASR RNP", "ASR ANP", "DER RNP", "DER ANP"]
        body = [
            [a] + [stat_cell(m)(a, d) for m in ("clean_acc", "asr", "der") for d in FIRST_DEFENSES] for a in g.attacks()
        ]
        lines += [*_table(header, body), ""]
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return [*lines, ""] if plots else lines


def markdown(
    root: Path, cells: Sequence[Cell], groups: dict[Key, Group], max_ca_drop: float, plots: dict[Key, list[str]]
) -> str:
    """results.md: a header that defines every number, then one section per (dataset, arch), then failures."""
    lines = [
        f"# Sweep results: {root.name}",
        "",
        f"{len(cells)} cells under `{root}`: {sum(c.ok for c in cells)} ok, "
        f"{sum(not c.ok for c in cells)} failed or invalid.",
        "",
        "Values are mean ± sample standard deviation (n - 1) over seeds, in percent; `(n=k)` marks a cell with",
        f"fewer seeds than the rest. `{BASELINE}` is the backdoored model before any defense (every cell's",
        "`before`). **Bold**: the best defense of the row = the lowest mean ASR among the defenses whose mean",
        f"clean accuracy is at most {100 * max_ca_drop:.1f} points below `{BASELINE}`; ties go to the higher clean",
        "accuracy; no bold when none qualifies. DER = (max(0, ΔASR) − max(0, ΔCA) + 1) / 2.",
        "",
    ]
    for key, g in groups.items():
        lines += group_markdown(key, g, max_ca_drop, plots.get(key, []))
    bad = [c for c in cells if not c.ok]
    if bad:
        lines += ["## Failed or invalid cells", ""]
        body = [[c.row["path"], c.row["status"], _first_line(c.row["error"])] for c in bad]
        lines += _table(["cell", "status", "error"], body)
    return "\n".join(lines).rstrip() + "\n"


@dataclass
class Report:
    cells: list[Cell]
    files: list[Path]

    @property
    def failed(self) -> list[Cell]:
        return [c for c in self.cells if not c.ok]


def write_report(root: Path, max_ca_drop: float = 0.05, plots: bool = True) -> Report:
    """Read every cell under `root` and write results.csv, summary.csv, results.md and plots/ there."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"report: {root} is not a directory (pass a sweep dir, e.g. outputs/multirun/NAME)")
    cells = collect(root)
    groups = group_cells(cells)
    rows = [c.row for c in cells]
    files = [root / "results.csv", root / "summary.csv", root / "results.md"]
    atomic_write_text(files[0], to_csv(rows, _columns(rows)))
    summary = summary_rows(groups)
    atomic_write_text(files[1], to_csv(summary, list(dict.fromkeys(k for r in summary for k in r))))
    images: dict[Key, list[str]] = {}
    if plots:
        images = _plots(root, groups)
        files += [root / p for ps in images.values() for p in ps]
    atomic_write_text(files[2], markdown(root, cells, groups, max_ca_drop, images))
    log.info("report: %d cells (%d failed or invalid) -> %s", len(cells), sum(not c.ok for c in cells), files[2])
    return Report(cells, files)


def _plots(root: Path, groups: dict[Key, Group]) -> dict[Key, list[str]]:
    """PNG plots per (dataset, arch), as paths relative to `root`; none (with a warning) without matplotlib."""
    try:
        from benchmark import plots
    except ImportError as exc:
        log.warning("report: no plots (%s); install matplotlib: pip install 'matplotlib>=3.7'", exc)
        return {}
    out: dict[Key, list[str]] = {}
    for key, g in groups.items():
        out[key] = [str(p.relative_to(root)) for p in plots.group_plots(root / "plots", key, g)]
    return out


def log_to_wandb(report: Report, root: Path, logger_cfg: dict[str, Any], group: str) -> None:
    """One aggregate wandb run (job_type=report) in the sweep's group: the cells and summary as Tables, the plots."""
    import wandb

    from benchmark.loggers import LoggerConfig, wandb_mode

    cfg = LoggerConfig(**{**logger_cfg, "kind": "wandb"})
    rows = [c.row for c in report.cells]
    columns = _columns(rows)
    summary = summary_rows(group_cells(report.cells))
    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group or group,
        job_type="report",
        name=f"{cfg.group or group}-report",
        dir=str(root),
        mode=wandb_mode(cfg, root),
        reinit="finish_previous",
        config={"sweep_dir": str(root), "cells": len(rows), "failed": len(report.failed)},
    )
    try:
        data: dict[str, Any] = {"cells": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])}
        if summary:
            scols = list(dict.fromkeys(k for r in summary for k in r))
            data["summary"] = wandb.Table(columns=scols, data=[[r.get(c) for c in scols] for r in summary])
        for path in report.files:
            if path.suffix == ".png":
                data[f"plots/{path.stem}"] = wandb.Image(str(path))
        run.log(data)
    finally:
        run.finish()


class ReportCallback(Callback):
    """Hydra callback: after every multirun, write the report into the sweep dir (and wandb, if logging there).

    The sweep's cells never raise (benchmark.sweep), so this always runs; with `fail_on_error` the process
    then exits 1 when a cell failed, after its results and the report are safely written.
    """

    def __init__(self, max_ca_drop: float = 0.05, fail_on_error: bool = True) -> None:
        self.max_ca_drop = max_ca_drop
        self.fail_on_error = fail_on_error

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(str(config.hydra.sweep.dir))
        try:
            report = write_report(root, self.max_ca_drop)
            logger = OmegaConf.to_container(config.logger, resolve=True) if "logger" in config else {}
            if isinstance(logger, dict) and logger.get("kind") == "wandb":
                log_to_wandb(report, root, logger, root.name)
        except Exception:  # the cells' results are safe on disk; say how to redo the report
            log.exception("report failed; rerun it with: python -m benchmark.report %s", root)
            failed = True
        else:
            failed = bool(report.failed)
            for c in report.failed:
                log.error("cell %s %s: %s", c.row["path"], c.row["status"], _first_line(c.row["error"]))
            if report.failed:
                log.error(
                    "%d of %d cells failed or are invalid (see %s)",
                    len(report.failed),
                    len(report.cells),
                    root / "results.md",
                )
        if failed and self.fail_on_error:
            sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a sweep directory (e.g. outputs/multirun/quickstart)")
    parser.add_argument(
        "--max-ca-drop",
        type=float,
        default=0.05,
        help="best defense: the lowest ASR among those losing at most this clean accuracy (default 0.05)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--wandb", action="store_true", help="also log an aggregate wandb run (offline without a key)")
    parser.add_argument("--wandb-project", default="backdoor-benchmark")
    parser.add_argument("--wandb-group", default=None, help="default: the directory's name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not 0.0 <= args.max_ca_drop <= 1.0:
        parser.error(f"--max-ca-drop={args.max_ca_drop} is out of range: allowed [0.0, 1.0]")
    try:
        report = write_report(args.dir, args.max_ca_drop, plots=not args.no_plots)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.wandb:
        log_to_wandb(report, args.dir, {"project": args.wandb_project}, args.wandb_group or args.dir.resolve().name)
    for path in report.files:
        print(path)
    if report.failed:
        print(f"{len(report.failed)} of {len(report.cells)} cells failed or are invalid: listed in results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
