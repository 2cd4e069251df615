"""`model.path`: a checkpoint the user has (ours, anyone's, BackdoorBench's attack_result.pt), read safely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from attacks.badnets import BadNets
from benchmark.core.archs import build_classifier
from benchmark.core.errors import ConfigError
from benchmark.run.config import build_run_config
from benchmark.run.model import new_model
from benchmark.weights.checkpoint import CheckpointError, UnsafeCheckpointError
from benchmark.weights.local import BACKDOORBENCH_ARCHS, LocalSettings, model_from_path
from tests.conftest import compose_cfg
from tests.helpers.cli import run_cli

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def preact(**kwargs) -> torch.nn.Module:
    return build_classifier("preact_resnet18", 10, 3, MEAN, STD, width=4, **kwargs)


def backdoorbench_keys(width: int) -> set[str]:
    """The state-dict names of BackdoorBench's PreActResNet18 (models/preact_resnet.py), spelled out by hand."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "linear.weight", "linear.bias"}
    for stage in range(1, 5):
        for block in range(2):
            p = f"layer{stage}.{block}."
            keys |= {p + f"bn{i}.{s}" for i in (1, 2) for s in bn} | {p + "conv1.weight", p + "conv2.weight"}
            if stage > 1 and block == 0:
                keys.add(p + "shortcut.0.weight")
    return keys


def attack_result(tmp_path: Path, state: dict, **extra) -> Path:
    """A file in the layout BackdoorBench's save_attack_result writes (plain dicts and tensors)."""
    x = torch.randint(0, 256, (6, 3, 32, 32)).float()  # their nHWC_to_nCHW(uint8 data).float()
    obj = {
        "model_name": "preactresnet18",
        "num_classes": 10,
        "model": state,
        "data_path": "./data",
        "img_size": [32, 32, 3],
        "clean_data": "cifar10",
        "bd_train": {"x": x[:2], "y": torch.zeros(2, dtype=torch.long), "original_index": None},
        "bd_test": {"x": x, "y": torch.zeros(6, dtype=torch.long)},
        **extra,
    }
    path = tmp_path / "attack_result.pt"
    torch.save(obj, path)
    return path


def test_our_preact_without_final_norm_has_backdoorbench_key_names() -> None:
    assert set(preact(final_norm=False).net.state_dict()) == backdoorbench_keys(4)
    assert "bn.weight" in preact().net.state_dict()  # the default keeps the RNP architecture
    assert BACKDOORBENCH_ARCHS["preactresnet18"] == ("preact_resnet18", {"final_norm": False})


def test_backdoorbench_resnet18_is_torchvisions_and_loads_into_resnet18_imagenet(tmp_path: Path) -> None:
    """BackdoorBench's `resnet18` is torchvision's resnet18(num_classes): its state dict loads strictly."""
    import torchvision

    theirs = torchvision.models.resnet18(num_classes=10)
    path = attack_result(tmp_path, theirs.state_dict(), model_name="resnet18")
    ours = lambda: build_classifier("resnet18_imagenet", 10, 3, MEAN, STD)  # noqa: E731
    got = model_from_path(LocalSettings(str(path)), ("resnet18_imagenet", {}, 10), BadNets(), ours)
    assert torch.equal(got.model.net.fc.weight, theirs.fc.weight)


def test_backdoorbench_attack_result_loads_strictly_with_its_bd_test(tmp_path: Path) -> None:
    source = preact(final_norm=False)
    path = attack_result(tmp_path, source.net.state_dict())
    cell = ("preact_resnet18", {"width": 4, "final_norm": False}, 10)
    got = model_from_path(LocalSettings(str(path)), cell, BadNets(), lambda: preact(final_norm=False))
    for name, value in source.state_dict().items():
        assert torch.equal(got.model.state_dict()[name], value), name
    assert got.bd_test is not None and got.bd_test.x.dtype == torch.uint8 and len(got.bd_test) == 6
    assert got.meta["backdoorbench"]["model_name"] == "preactresnet18"
    with pytest.raises(ConfigError, match=r"arch=preact_resnet18 \+arch.kwargs.final_norm=False"):
        model_from_path(LocalSettings(str(path)), ("preact_resnet18", {}, 10), BadNets(), preact)


def test_backdoorbench_file_with_numpy_arrays_is_refused_without_running_code(tmp_path: Path) -> None:
    state = preact(final_norm=False).net.state_dict()
    path = attack_result(tmp_path, state, bd_train={"original_index": np.arange(3)})
    with pytest.raises(UnsafeCheckpointError, match="re-saved with tensors only"):
        model_from_path(LocalSettings(str(path)), ("preact_resnet18", {"final_norm": False}, 10), BadNets(), preact)


def test_plain_state_dict_with_key_mapping_and_a_safetensors_file(tmp_path: Path) -> None:
    source = preact()
    state = {f"module.{k.replace('linear', 'fc')}": v for k, v in source.net.state_dict().items()}
    pt = tmp_path / "ckpt.pt"
    torch.save({"weights": state}, pt)
    settings = LocalSettings(str(pt), "weights", ("module.",), {r"^fc\.": "linear."})
    got = model_from_path(settings, ("preact_resnet18", {}, 10), BadNets(), preact)
    assert torch.equal(got.model.net.linear.weight, source.net.linear.weight) and got.bd_test is None
    with pytest.raises(CheckpointError, match="unexpected"):
        model_from_path(LocalSettings(str(pt), "weights"), ("preact_resnet18", {}, 10), BadNets(), preact)
    st = tmp_path / "ckpt.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.net.state_dict().items()}, st)
    got = model_from_path(LocalSettings(str(st)), ("preact_resnet18", {}, 10), BadNets(), preact)
    assert torch.equal(got.model.net.conv1.weight, source.net.conv1.weight)
    with pytest.raises(ConfigError, match="is not a file"):
        model_from_path(LocalSettings(str(tmp_path / "nope.pt")), ("preact_resnet18", {}, 10), BadNets(), preact)


def test_readme_example_defends_a_checkpoint_of_your_own(tmp_path: Path, tmp_home: Path) -> None:
    """The README's example: `model.path=ckpt.pt attack=badnets` (debug=default: embedded data, tiny convnet)."""
    overrides = ["debug=default", "defense=none", "attack=badnets"]
    model = new_model(build_run_config(compose_cfg(overrides)), torch.device("cpu"))
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.net.state_dict().items()}}, ckpt)
    run_dir = tmp_path / "run"
    proc = run_cli([*overrides, f"model.path={ckpt}", f"hydra.run.dir={run_dir}"], tmp_home)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result["model_source"] == "path" and result["model_meta"]["path"] == str(ckpt)
    assert result["weights_sha256"]


def test_a_cell_on_a_backdoorbench_file_records_its_bd_test_asr(tmp_path: Path, tmp_home: Path) -> None:
    """Through the cell: the file's model defended, its bd_test evaluated before and after, beside our trigger."""
    from benchmark.run.cell import run_cell
    from benchmark.run.runtime import start_runtime

    arch = ["arch=preact_resnet18", "+arch.kwargs.final_norm=false", "defense=none", "attack=badnets"]
    rc = build_run_config(compose_cfg(["debug=default", *arch]))
    net = new_model(rc, torch.device("cpu")).net
    x = torch.randint(0, 256, (5, rc.dataset.channels, 28, 28)).float()
    obj = {"model_name": "preactresnet18", "num_classes": rc.dataset.num_classes, "model": net.state_dict(),
           "bd_test": {"x": x, "y": torch.zeros(5, dtype=torch.long)}}  # fmt: skip
    torch.save(obj, tmp_path / "attack_result.pt")
    rc = build_run_config(compose_cfg(["debug=default", *arch, f"model.path={tmp_path / 'attack_result.pt'}"]))
    result = run_cell(rc, tmp_path / "run", start_runtime(rc))
    meta = result["model_meta"]
    assert result["model_source"] == "path" and meta["backdoorbench"]["model_name"] == "preactresnet18"
    assert meta["bd_test"]["images"] == 5 and 0.0 <= meta["bd_test"]["asr_before"] <= 1.0
    assert meta["bd_test"]["asr_after"] == meta["bd_test"]["asr_before"]  # defense=none changes nothing
