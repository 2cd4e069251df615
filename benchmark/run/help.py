"""`python -m benchmark --help`: the project's help page (conf/hydra/help/benchmark.yaml) and what it lists.

The page names the options of each group a user picks. They come from Hydra's own config loader with the
command line's overrides, so options from a lab's config dir (`hydra.searchpath=[file:///lab/conf]`) and
launcher plugins show too; only when Hydra is not running (a test, a tool) are the packaged files listed.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from benchmark import CONF_DIR

RESOLVER = "benchmark_options"


def group_options(group: str) -> str:
    """The options of config group `group` (e.g. `attack`, `hydra/launcher`), comma-separated."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    if GlobalHydra.instance().is_initialized() and HydraConfig.initialized():
        hc = HydraConfig.get()
        overrides = [*hc.overrides.hydra, *hc.overrides.task]
        loader = GlobalHydra.instance().config_loader()
        names = loader.get_group_options(group, config_name=hc.job.config_name, overrides=overrides)
    else:
        names = [p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")]
    return ", ".join(sorted(names))


def register_help_resolver() -> None:
    """Make `${benchmark_options:<group>}` available to the help template (idempotent)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, group_options)
