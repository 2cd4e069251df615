"""Experiment loggers: `none` (files only) and `wandb` (offline when no API key is configured)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from benchmark.core.validation import Checked

log = logging.getLogger(__name__)


@dataclass
class LoggerConfig(Checked):
    kind: Literal["none", "wandb"] = "none"
    project: str = "backdoor-benchmark"
    entity: str | None = None
    group: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


class NullLogger:
    def log_cell(self, result: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger:
    """One wandb run per cell: the config, before/after metrics as summary, the curve as a Table."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, name: str, config: dict[str, Any], job_type: str) -> None:
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            name=name,
            job_type=job_type,
            config=config,
            dir=str(run_dir),
            mode=wandb_mode(cfg, run_dir),
            reinit="finish_previous",
        )

    def log_cell(self, result: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        summary = {f"{phase}/{k}": v for phase in ("before", "after") for k, v in result[phase].items()}
        summary["der"] = result["der"]
        summary.update({f"timing_s/{k}": v for k, v in result["timing_s"].items()})
        summary["model_source"] = result["model_source"]
        self.run.log(summary)
        self.run.summary.update(summary)
        if curve:
            columns = list(curve[0])
            table = self._wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in curve])
            self.run.log({"defense_curve": table})

    def finish(self) -> None:
        self.run.finish()


def wandb_mode(cfg: LoggerConfig, run_dir: Path) -> str:
    """`auto`: online with an API key, else offline (files under `run_dir`, uploadable with `wandb sync`)."""
    if cfg.mode != "auto":
        return cfg.mode
    if os.environ.get("WANDB_MODE"):  # the user's environment decides (e.g. WANDB_MODE=offline on a cluster)
        return os.environ["WANDB_MODE"]
    if _has_wandb_key():
        return "online"
    log.info("wandb: no API key found, logging offline under %s (sync later with `wandb sync`)", run_dir)
    return "offline"


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def make_logger(
    cfg: LoggerConfig, run_dir: Path, name: str, config: dict[str, Any], job_type: str
) -> NullLogger | WandbLogger:
    if cfg.kind == "wandb":
        return WandbLogger(cfg, run_dir, name, config, job_type)
    return NullLogger()
