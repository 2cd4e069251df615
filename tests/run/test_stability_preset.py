"""experiment=stability: one knob grid per defense, around its published value, all on the quickstart's model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.run.config import build_run_config
from benchmark.run.model import model_cache_path
from tests.conftest import CONF, compose_cfg, group_options

DEFENSES = [d for d in group_options("defense") if d != "none"]


@pytest.mark.parametrize("defense", DEFENSES)
def test_every_defense_has_a_knob_grid_around_its_published_value(defense: str) -> None:
    """Each swept key is a setting of the defense, and its default (the published value) lies inside the grid."""
    params = OmegaConf.load(CONF / "experiment_defense" / f"stability_{defense}.yaml").hydra.sweeper.params
    published = OmegaConf.load(CONF / "defense" / f"{defense}.yaml")
    assert 1 <= len(params) <= 2
    for key, values in params.items():
        assert key.startswith("defense.") and key[len("defense.") :] in published, key
        grid = [float(v) for v in str(values).split(",")]
        assert len(grid) >= 3 and grid == sorted(grid), key
        assert min(grid) <= float(published[key[len("defense.") :]]) <= max(grid), key


@pytest.mark.parametrize("knob", ["defense=rnp defense.unlearn_lr=0.03", "defense=anp defense.eps=0.6", "defense=clp"])
def test_every_cell_reuses_the_quickstart_model(knob: str, tmp_home: Path) -> None:
    """The model cache key holds no defense setting, and the preset builds the quickstart's model."""
    cpu = torch.device("cpu")
    quickstart = build_run_config(compose_cfg(["experiment=quickstart"]))
    cell = build_run_config(compose_cfg(["experiment=stability", *knob.split()]))
    assert model_cache_path(cell, Path("c"), cpu) == model_cache_path(quickstart, Path("c"), cpu)
