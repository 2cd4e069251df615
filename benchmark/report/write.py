"""Writes a sweep's report (CSV, Markdown, plots, wandb) and runs it after every multirun (`ReportCallback`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from benchmark.core.errors import BenchmarkError, stop_interrupted
from benchmark.report.html import html_report
from benchmark.report.markdown import first_line, markdown
from benchmark.report.schema import notes_markdown, report_notes, write_set
from benchmark.report.stability import MAX_ASR, MAX_CA_COST, stability_report
from benchmark.report.table import Cell, Group, Key, collect, columns, group_cells, summary_rows, to_csv
from benchmark.run.sweep import cells_running

log = logging.getLogger("benchmark.report")


class NoCellsError(BenchmarkError, FileNotFoundError):
    """The report's directory is missing or holds no cell file: nothing to report, and nothing is written."""


@dataclass
class Report:
    cells: list[Cell]
    files: list[Path]

    @property
    def failed(self) -> list[Cell]:
        return [c for c in self.cells if not c.ok]


def write_report(
    root: Path,
    max_ca_drop: float = 0.05,
    plots: bool = True,
    stability_max_asr: float = MAX_ASR,
    stability_max_ca_cost: float = MAX_CA_COST,
) -> Report:
    """Read every cell under `root` and write results.csv, summary.csv, results.md, report.html and plots/ there;
    cells that differ in a defense's knobs (experiment=stability) also get stability scores and heat-maps.

    Raises NoCellsError, before writing anything, when `root` is not a directory or holds no cell.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoCellsError(f"report: {root} is not a directory (pass a sweep dir, e.g. outputs/multirun/NAME)")
    cells, running = collect(root), cells_running(root)
    if not cells:
        raise NoCellsError(
            f"report: no result.json or failed.json under {root}; nothing written "
            + (
                f"({len(running)} cell(s) are being run by another sweep now: {', '.join(running)}; rerun the "
                "report when it finishes)"
                if running
                else "(pass a sweep dir, e.g. outputs/multirun/NAME, after its cells ran)"
            )
        )
    groups = group_cells(cells)
    rows = [c.row for c in cells]
    files = [root / "results.csv", root / "summary.csv", root / "results.md", root / "report.html"]
    summary = summary_rows(groups)
    images: dict[Key, list[str]] = {}
    if plots:
        images = _plots(root, groups)
    notes = report_notes(cells, running)
    for line in notes:
        log.warning("report: %s", line)
    stability = stability_report(root, cells, stability_max_asr, stability_max_ca_cost, plots)
    texts = [  # all rendered before any is written: one odd cell cannot leave them disagreeing
        to_csv(rows, columns(rows)),
        to_csv(summary, list(dict.fromkeys(k for r in summary for k in r))),
        markdown(root, cells, groups, max_ca_drop, images, preface=stability) + notes_markdown(notes),
        html_report(root, cells, groups, max_ca_drop, images),
    ]
    write_set(dict(zip(files, texts, strict=True)))
    files += [root / p for ps in images.values() for p in ps]
    log.info("report: %d cells (%d failed or invalid) -> %s", len(cells), sum(not c.ok for c in cells), files[2])
    return Report(cells, files)


def _plots(root: Path, groups: dict[Key, Group]) -> dict[Key, list[str]]:
    """PNG plots per (dataset, arch), as paths relative to `root`; none (with a warning) without matplotlib."""
    try:
        from benchmark.report import plots
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

    from benchmark.run.loggers import LoggerConfig, wandb_mode

    cfg = LoggerConfig(**{**logger_cfg, "kind": "wandb"})
    rows = [c.row for c in report.cells]
    cols = columns(rows)
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
        data: dict[str, Any] = {"cells": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])}
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

    The sweep's cells never raise (benchmark.run.sweep), so this always runs; with `fail_on_error` the process
    then exits 1 when a cell failed, after its results and the report are safely written.
    """

    def __init__(
        self,
        max_ca_drop: float = 0.05,
        fail_on_error: bool = True,
        stability_max_asr: float = MAX_ASR,
        stability_max_ca_cost: float = MAX_CA_COST,
    ) -> None:
        self.max_ca_drop = max_ca_drop
        self.fail_on_error = fail_on_error
        self.stability = (stability_max_asr, stability_max_ca_cost)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(str(config.hydra.sweep.dir))
        try:
            report = write_report(root, self.max_ca_drop, True, *self.stability)
            logger = OmegaConf.to_container(config.logger, resolve=True) if "logger" in config else {}
            if isinstance(logger, dict) and logger.get("kind") == "wandb":
                log_to_wandb(report, root, logger, root.name)
        except NoCellsError as exc:  # no cell left a file (all killed?): nothing to report, no traceback
            log.error("%s", exc)
            failed = True
        except BenchmarkError as exc:  # a full disk, say: one line, then how to redo the report
            log.error("report not written: %s Rerun it with: python -m benchmark.report %s", exc, root)
            failed = True
        except Exception:  # the cells' results are safe on disk; say how to redo the report
            log.exception("report failed; rerun it with: python -m benchmark.report %s", root)
            failed = True
        else:
            failed = bool(report.failed)
            for c in report.failed:
                log.error("cell %s %s: %s", c.row["path"], c.row["status"], first_line(c.row["error"]))
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
    parser.add_argument(
        "--stability-max-asr", type=float, default=MAX_ASR, help="stability score: a cell passes at ASR <= this"
    )
    parser.add_argument(
        "--stability-max-ca-cost",
        type=float,
        default=MAX_CA_COST,
        help="stability score: ... and a clean-accuracy loss <= this (fraction)",
    )
    parser.add_argument("--wandb", action="store_true", help="also log an aggregate wandb run (offline without a key)")
    parser.add_argument("--wandb-project", default="backdoor-benchmark")
    parser.add_argument("--wandb-group", default=None, help="default: the directory's name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for flag in ("max_ca_drop", "stability_max_asr", "stability_max_ca_cost"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} is out of range: allowed [0.0, 1.0]")
    try:
        report = write_report(
            args.dir, args.max_ca_drop, not args.no_plots, args.stability_max_asr, args.stability_max_ca_cost
        )
    except BenchmarkError as exc:  # no cells, a full disk
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        stop_interrupted(
            f"the report of {args.dir} was not finished",
            "Each file is written whole or not at all: rerun the command to write them all.",
        )
    if args.wandb:
        log_to_wandb(report, args.dir, {"project": args.wandb_project}, args.wandb_group or args.dir.resolve().name)
    for path in report.files:
        print(path)
    if report.failed:
        print(f"{len(report.failed)} of {len(report.cells)} cells failed or are invalid: listed in results.md")
    return 0
