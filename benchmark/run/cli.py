"""Entry point: `python -m benchmark [overrides]` runs one cell; `-m` sweeps a grid (Hydra)."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from benchmark.core.errors import BenchmarkError, DiskFullError, stop_interrupted
from benchmark.core.io import disk_full
from benchmark.run.help import register_help_resolver
from benchmark.run.runtime import CONF_DIR, start_runtime

log = logging.getLogger("benchmark")
register_help_resolver()  # the option lists of `--help` (conf/hydra/help/benchmark.yaml)


OUTPUT_DIR = re.compile(r"\+{0,2}hydra\.(run|sweep)\.dir=(.*)")
NO_OUTPUT = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion", "-sc")


def check_output_dirs(argv: list[str]) -> None:
    """Refuse an output folder (hydra.run.dir / hydra.sweep.dir, else ./outputs) that cannot be written,
    before Hydra tries to create it and fails with a traceback of its own."""
    from benchmark.run.config import check_writable  # imported here: `--help` answers without it

    if any(a in NO_OUTPUT or a.startswith(("--cfg=", "--info=")) for a in argv):
        return
    given = [(m.group(1), m.group(2).strip("'\"")) for m in map(OUTPUT_DIR.fullmatch, argv) if m]
    for kind, value in given or [("run", "outputs")]:
        if "${" not in value:  # an interpolation is Hydra's to resolve
            check_writable(Path(value), f"hydra.{kind}.dir")


def check_start_up(argv: list[str]) -> None:
    """The torch/torchvision pair first (the output check imports torchvision), then the output folder:
    each fault is one message and exit code 2 before Hydra, which would bury it in its own traceback."""
    from benchmark.run.builds import check_torch_builds

    try:
        check_torch_builds()
        check_output_dirs(argv)
    except BenchmarkError as exc:
        print(f"Error: {exc}", file=sys.stderr)  # before Hydra: no logging is configured yet
        raise SystemExit(2) from None


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:  # resume, failed.json instead of an abort, one GPU per job
        from benchmark.run.sweep import run_sweep_cell

        run_sweep_cell(cfg, run_dir, hc.job.num, Path(hc.sweep.dir))
        return
    from benchmark.run.cell import run_cell  # imported late so `--help` and bad overrides answer fast
    from benchmark.run.config import build_run_config

    try:
        rc = build_run_config(cfg)  # typed and checked once, here at the door
        run_cell(rc, run_dir, start_runtime(rc))
    except BenchmarkError as exc:
        log.error("%s", exc)
        sys.exit(2)
    except OSError as exc:
        if not disk_full(exc):
            raise
        log.error("%s", DiskFullError(Path(exc.filename or run_dir).parent, None, f"running cell {run_dir}"))
        sys.exit(2)
    except KeyboardInterrupt:
        stop_interrupted(
            f"cell {run_dir} did not finish and was not recorded",
            "A rerun starts it again, reusing any model already cached and resuming an unfinished download.",
        )


def entry() -> None:
    """`python -m benchmark`: the start-up checks, then Hydra."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    check_start_up(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    entry()
