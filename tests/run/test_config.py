"""Every option of every config group composes and validates; bad values fail at start, clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from benchmark.core.archs import to_input
from benchmark.core.errors import ConfigError
from benchmark.core.precision import Precision
from benchmark.run.config import build_run_config, check_writable
from benchmark.run.key import CELL_FIELDS, CELL_GROUPS, CellKey
from benchmark.run.model import new_model
from benchmark.run.runtime import auto_threads, busy_cores, runtime_info, setup_runtime, usable_cores
from benchmark.weights.zoo import load_registry
from tests.conftest import CONF, CONF_DIRS, STUDIES_CONF, compose_cfg, group_options

GROUPS = ["attack", "dataset", "arch", "defense", "train", "logger", "experiment"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)], ids=lambda v: str(v))
def test_every_option_composes_and_validates(group: str, option: str, tmp_home) -> None:
    cfg = compose_cfg([f"{group}={option}"])
    parts = build_run_config(cfg)
    assert parts.cell["seed"] == 0


def test_defaults_are_the_paper_cell(tmp_home) -> None:
    parts = build_run_config(compose_cfg([]))
    assert parts.cell == {"attack": "badnets", "dataset": "cifar10", "arch": "resnet18", "defense": "rnp", "seed": 0}


@pytest.mark.parametrize(
    "override,needle",
    [
        ("attack.poison_rate=1.5", "poison_rate=1.5 is out of range: allowed [0.0, 1.0]"),
        ("attack.target=10", "attack.target=10 is out of range"),
        ("attack.label_mode=some", "label_mode='some' is invalid: expected one of 'all2one', 'all2all'"),
        ("defense.prune_threshold=2", "prune_threshold=2 is out of range"),
        ("defense.selection=oracle", "selection='oracle' is invalid"),
        ("train.epochs=0", "epochs=0 is out of range"),
        ("train.lr=fast", "lr='fast' is invalid: expected float"),
        ("defense_data.size=5000", "defense_data.size=5000 is out of range"),
        ("+defense.bogus=1", "unexpected keyword argument 'bogus'"),
        ("arch.name=resnet183", "Unknown architecture 'resnet183'; choose from"),
        ("seed=-1", "seed=-1 is invalid"),
        ("seed=4294967296", "seed=4294967296 is invalid: expected an integer in [0, 4294967295]"),
        ("threads=0", "threads=0 is invalid: expected auto, null or an integer >= 1"),
        ("eval.batch_size=0", "batch_size=0 is out of range"),
        ("precision=fp16", "precision='fp16' is invalid: choose from auto, fp32, bf16"),
        ("compile=fast", "compile='fast' is invalid: choose from eager, default, reduce-overhead, max-autotune"),
        ("compile=false", "compile=False is invalid: choose from eager"),
        ("dataset.size=100000", "size=100000 is out of range: allowed [8, 1024]"),
        ("reuse_learned=sometimes", "reuse_learned='sometimes' is invalid: expected true or false"),
        ("resume=2", "resume=2 is invalid: expected true or false"),
    ],
)
def test_bad_values_fail_with_the_value_and_the_range(override: str, needle: str, tmp_home) -> None:
    with pytest.raises(ConfigError) as err:
        build_run_config(compose_cfg([override]))
    assert needle in str(err.value)


def test_unknown_group_option_names_the_choices() -> None:
    with pytest.raises(MissingConfigException) as err:
        compose_cfg(["defense=nope"])
    assert "rnp" in str(err.value) and "none" in str(err.value)


@pytest.mark.parametrize(
    "path", sorted(p for g in ("attack_dataset", "defense_dataset") for p in (CONF / g).glob("*.yaml"))
)
def test_specialisation_files_name_real_options_and_apply(path, tmp_home) -> None:
    """`<group>_dataset/<option>_<dataset>.yaml` must name existing options, and must take effect."""
    group = path.parent.name.split("_")[0]
    option, dataset = next((o, path.stem[len(o) + 1 :]) for o in group_options(group) if path.stem.startswith(o + "_"))
    assert dataset in group_options("dataset"), path
    cfg = compose_cfg([f"{group}={option}", f"dataset={dataset}"])
    specialised = OmegaConf.load(path)
    assert all(cfg[group][k] == v for k, v in specialised.items()), path
    build_run_config(cfg)


def test_a_yaml_whose_name_differs_from_its_file_name_is_refused(tmp_home) -> None:
    cfg = compose_cfg([])
    with pytest.raises(ConfigError, match=r"attack=badnets2 but conf/attack/badnets2.yaml says name: badnets"):
        build_run_config(
            cfg, choices={"attack": "badnets2", "dataset": "cifar10", "arch": "resnet18", "defense": "rnp"}
        )
    key = build_run_config(cfg, choices={"attack": "badnets", "dataset": "cifar10"}).key
    assert key.model_key() == "cifar10/resnet18/badnets" and key.label() == "cifar10-resnet18-badnets-rnp-0"


def test_unwritable_output_paths_are_refused_before_any_work(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"paths.cache=.*file/models cannot be created: .*file is a file"):
        check_writable(blocker / "models", "paths.cache")
    check_writable(tmp_path / "new" / "dir", "paths.cache")  # creatable: fine


def test_invalid_yaml_in_an_extra_zoo_file_is_named(tmp_path) -> None:
    bad = tmp_path / "lab_zoo.yaml"
    bad.write_text("key: [unclosed\n")
    with pytest.raises(ConfigError, match=r"zoo registry .*lab_zoo.yaml is not valid YAML"):
        load_registry([bad])


@pytest.mark.parametrize("arch", group_options("arch"))
@pytest.mark.parametrize("preset", group_options("experiment"))
def test_every_preset_composes_with_every_arch_in_debug(preset: str, arch: str) -> None:
    """`experiment=X arch=Y debug=default` builds a working model: a preset's settings for one architecture live in
    conf/experiment_arch/<preset>_<arch>.yaml, so they never reach another architecture's factory."""
    rc = build_run_config(compose_cfg([f"experiment={preset}", f"arch={arch}", "debug=default"]))
    model = new_model(rc, torch.device("cpu")).eval()
    size, channels = rc.dataset.size or 28, rc.dataset.channels
    images = torch.randint(0, 256, (2, channels, size, size), dtype=torch.uint8)
    with torch.no_grad():
        assert model(to_input(images)).shape == (2, rc.dataset.num_classes)


@pytest.mark.parametrize(
    "path", sorted(p for d in CONF_DIRS for p in (d / "experiment_arch").glob("*.yaml")), ids=lambda p: p.stem
)
def test_experiment_arch_files_name_a_preset_and_an_arch_and_apply(path: Path) -> None:
    archs = group_options("arch")
    preset, arch = next(
        (p, path.stem[len(p) + 1 :])
        for p in group_options("experiment")
        if path.stem.startswith(p + "_") and path.stem[len(p) + 1 :] in archs
    )
    cfg = compose_cfg([f"experiment={preset}", f"arch={arch}"])
    for key, value in OmegaConf.load(path).kwargs.items():
        assert cfg.arch.kwargs[key] == value, (path, key)


def test_the_cell_key_is_the_one_spelling_of_a_cells_coordinates() -> None:
    """The sweep subdir in conf/config.yaml, result.json's cell and the subdir parser all follow CellKey."""
    key = CellKey(dataset="cifar10", arch="resnet18", attack="badnets", defense="rnp", seed=3)
    assert CellKey.from_subdir(Path("lr=0.1") / key.subdir()) == key
    assert CellKey.from_subdir(Path("cifar10/resnet18/badnets/rnp")) is None
    pattern = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml").hydra.sweep, resolve=False)["subdir"]
    spelled = [f"${{hydra:runtime.choices.{g}}}" for g in CELL_GROUPS] + ["seed${seed}"]
    assert pattern == "/".join(spelled)
    assert tuple(build_run_config(compose_cfg([])).cell) == CELL_FIELDS


def test_the_studies_presets_stay_found_when_a_command_line_adds_a_lab_folder(tmp_path: Path) -> None:
    """The search-path plugin appends studies/conf whatever `hydra.searchpath` says (it used to be replaced)."""
    (tmp_path / "experiment").mkdir()
    cfg = compose_cfg([f"hydra.searchpath=[file://{tmp_path}]", "experiment=scale_study"])
    assert cfg.sweep_name == OmegaConf.load(STUDIES_CONF / "experiment/scale_study.yaml").sweep_name


def test_a_size_the_data_does_not_have_is_refused_not_recorded(tmp_home) -> None:
    """embedded and fashion_mnist do not resize: dataset.size=64 on their 28x28 images would be ignored."""
    from benchmark.run.cell import prepare_data

    rc = build_run_config(compose_cfg(["dataset=embedded", "dataset.size=64"]))
    with pytest.raises(ConfigError, match=r"dataset.size=64 is invalid for embedded: its images are 28x28"):
        prepare_data(rc, torch.device("cpu"))


def test_a_pseudo_file_system_is_not_writable_even_for_root(tmp_home) -> None:
    with pytest.raises(ConfigError, match=r"paths\.cache=/proc/h25/cache is not writable: /proc refuses a new file"):
        check_writable(Path("/proc/h25/cache"), "paths.cache")


def test_threads_auto_counts_only_the_free_cores() -> None:
    assert auto_threads(2, 0.1) == 2 and auto_threads(2, 0.9) == 1 and auto_threads(2, 6.5) == 1
    assert auto_threads(16, 4.2) == 12 and auto_threads(4, 0.0) == 4
    assert build_run_config(compose_cfg(["experiment=quickstart"])).threads == "auto"


def test_busy_cores_sees_a_spinning_process_and_not_finished_work(tmp_path: Path) -> None:
    """Sampled now, not averaged over the last minute: a spinner pinned to one of our cores shows up at once."""
    core = min(os.sched_getaffinity(0))
    spin = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    try:
        time.sleep(0.5)
        assert busy_cores(0.5) >= 0.7  # the spinner's core (more if other work shares the machine)
    finally:
        spin.kill()
        spin.wait()
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 10 0 10 80 0 0 0 0 0 0\n")
    assert busy_cores(0.0, stat) == 0.0  # no time passed between samples: nothing measured as busy
    assert busy_cores(0.0, tmp_path / "missing") is None  # no /proc: the caller falls back to the load average


def test_threads_auto_is_applied_and_recorded() -> None:
    before = torch.get_num_threads()
    try:
        setup_runtime(0, "cpu", "auto")
        info = runtime_info(torch.device("cpu"), Precision("fp32"))
        auto = info["threads_auto"]
        assert auto["cores"] == usable_cores() and 1 <= auto["chosen"] <= auto["cores"] and auto["load_1min"] >= 0
        assert 0 <= auto["busy_cores"] <= auto["cores"] + 0.05
        assert info["torch_threads"] == auto["chosen"]
    finally:
        torch.set_num_threads(before)
