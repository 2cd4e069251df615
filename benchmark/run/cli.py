"""Entry point: `python -m benchmark [overrides]` runs one cell; `-m` sweeps a grid (Hydra)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from benchmark.core.errors import BenchmarkError, stop_interrupted
from benchmark.run.help import register_help_resolver
from benchmark.run.runtime import CONF_DIR, start_runtime

log = logging.getLogger("benchmark")
register_help_resolver()  # the option lists of `--help` (conf/hydra/help/benchmark.yaml)


def main() -> None:
    """Check the torch/torchvision pair, then hand over to Hydra (whose callbacks import torchvision)."""
    from benchmark.run.builds import check_torch_builds

    try:
        check_torch_builds()
    except BenchmarkError as exc:
        print(exc, file=sys.stderr)  # before Hydra: no logging is configured yet
        sys.exit(2)
    hydra_main()


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
    except KeyboardInterrupt:
        stop_interrupted(
            f"cell {run_dir} did not finish and was not recorded",
            "A rerun starts it again, reusing any model already cached and resuming an unfinished download.",
        )


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
