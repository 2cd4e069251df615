"""A checkpoint the user already has (`model.path`): ours, anyone's state dict, or BackdoorBench's
`attack_result.pt`, read under the same rules as the zoo's (weights only, strict keys, nothing executed).

BackdoorBench (`utils/save_load_attack.py`) saves one torch file: `model_name`, `num_classes`, `model` (the
state dict), `img_size`, `clean_data` (the dataset's name) and `bd_test` (`x`: the poisoned test images,
float N x C x H x W in 0..255; `y`: their attack-target labels). Their architectures map onto ours by name
(`BACKDOORBENCH_ARCHS`); their poisoned test set gives an ASR of its own beside the cell's trigger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attacks.base import Attack
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError
from benchmark.sources.fetch import sha256_file
from benchmark.weights.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    load_strict,
    map_keys,
    read_checkpoint,
    state_dict_of,
)

log = logging.getLogger(__name__)

# BackdoorBench's `model_name` -> (our arch, the kwargs that make its state dict key-for-key theirs).
# Checked against BackdoorBench's models/preact_resnet.py (same names and shapes, no norm after the last stage)
# and its generate_cls_model, whose `resnet18` is torchvision's (the layout of our resnet18_imagenet). Their
# other names are torchvision models without a twin here (our vgg16_bn and mobilenet_v2 are CIFAR variants).
BACKDOORBENCH_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "preactresnet18": ("preact_resnet18", {"final_norm": False}),
    "resnet18": ("resnet18_imagenet", {}),
}
BACKDOORBENCH_KEYS = ("model_name", "model")


@dataclass(frozen=True)
class LocalSettings:
    """How to read `model.path`: the state-dict key and the key mapping (as a zoo entry has them)."""

    path: str
    state_dict_key: str | None = "state_dict"
    strip_prefix: tuple[str, ...] = ("module.",)
    rename: Mapping[str, str] | None = None


@dataclass
class LocalModel:
    """The loaded model, its record metadata, and the file's own poisoned test set (BackdoorBench) if any."""

    model: nn.Module
    meta: dict[str, Any]
    bd_test: ImageSet | None


def is_backdoorbench(obj: Any) -> bool:
    """Whether a checkpoint has the layout of BackdoorBench's `attack_result.pt`."""
    return isinstance(obj, Mapping) and all(k in obj for k in BACKDOORBENCH_KEYS) and isinstance(obj["model"], Mapping)


def check_backdoorbench_arch(obj: Mapping[str, Any], arch: str, kwargs: Mapping[str, Any], classes: int) -> None:
    """The cell's arch, kwargs and class count must be what BackdoorBench's `model_name` maps to."""
    name = str(obj["model_name"])
    if name not in BACKDOORBENCH_ARCHS:
        known = ", ".join(sorted(BACKDOORBENCH_ARCHS))
        raise ConfigError(f"BackdoorBench model_name={name!r} has no matching architecture here; known: {known}")
    ours, need = BACKDOORBENCH_ARCHS[name]
    if arch != ours or any(kwargs.get(k) != v for k, v in need.items()):
        extra = " ".join(f"+arch.kwargs.{k}={v}" for k, v in need.items())
        raise ConfigError(
            f"BackdoorBench model_name={name!r} is arch={ours} {extra}; this cell has arch={arch} "
            f"with kwargs {dict(kwargs)}"
        )
    if "num_classes" in obj and int(obj["num_classes"]) != classes:
        raise ConfigError(f"BackdoorBench file has num_classes={obj['num_classes']}; this dataset has {classes}")


def backdoorbench_test(obj: Mapping[str, Any], where: str) -> ImageSet | None:
    """BackdoorBench's poisoned test set as uint8 images with their target labels (None when absent)."""
    bd = obj.get("bd_test")
    if not isinstance(bd, Mapping) or not isinstance(bd.get("x"), Tensor) or not isinstance(bd.get("y"), Tensor):
        return None
    x, y = bd["x"], bd["y"].long()
    if x.dim() != 4 or len(x) != len(y):
        raise CheckpointError(f"{where}: bd_test x {tuple(x.shape)} / y {tuple(y.shape)} are not N images + N labels")
    if x.is_floating_point():
        if x.numel() and (x.min() < 0 or x.max() > 255 or not torch.equal(x, x.round())):
            raise CheckpointError(f"{where}: bd_test x holds values outside the integers 0..255")
        x = x.to(torch.uint8)
    return ImageSet(x.contiguous(), y)


def read_local(settings: LocalSettings) -> tuple[Path, Any]:
    """The file at `model.path` and its content, read without running code (a clear error otherwise)."""
    path = Path(settings.path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.path={settings.path!r} is not a file; give the path of a .pt/.pth/.safetensors")
    try:
        return path, read_checkpoint(path)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(
            f"{exc} A BackdoorBench attack_result.pt that holds numpy arrays or dataset objects (its newer "
            f"layout) must be re-saved with tensors only (model state dict, bd_test x/y as tensors)."
        ) from None


def model_from_path(
    settings: LocalSettings,
    cell: tuple[str, Mapping[str, Any], int],
    attack: Attack,
    build: Callable[[], nn.Module],
) -> LocalModel:
    """Load `model.path` strictly into a new model; `cell` is (arch, arch kwargs, class count)."""
    path, obj = read_local(settings)
    where = f"model.path {path}"
    bd_test, meta = None, {}
    if is_backdoorbench(obj):
        check_backdoorbench_arch(obj, *cell)
        state = dict(obj["model"])
        bd_test = backdoorbench_test(obj, where)
        meta = {k: obj[k] for k in ("model_name", "num_classes", "clean_data", "img_size") if k in obj}
        meta = {"backdoorbench": {k: (v if isinstance(v, (str, int)) else str(v)) for k, v in meta.items()}}
    else:
        state = state_dict_of(obj, settings.state_dict_key)
    state = map_keys(state, settings.strip_prefix, settings.rename or {})
    model = build()
    load_strict(getattr(model, "net", model), state, where)
    _restore_trigger(obj, attack, model, where)
    digest = sha256_file(path)
    log.info("model: from model.path %s (sha256 %s)", path, digest)
    return LocalModel(model, {"sha256": digest, "path": str(path), **meta}, bd_test)


def _restore_trigger(obj: Any, attack: Attack, model: nn.Module, where: str) -> None:
    """A learned trigger comes from the file (`trigger`, as our exports carry it); a fixed one from the attack."""
    trigger = obj.get("trigger") if isinstance(obj, Mapping) else None
    if trigger:
        device = next(model.parameters()).device
        attack.load_trigger_state({k: v.to(device) for k, v in trigger.items() if isinstance(v, Tensor)})
    elif type(attack).trigger_state is not Attack.trigger_state:
        raise CheckpointError(
            f"{where}: {type(attack).__name__} learns its trigger, but the file carries none (a `trigger` dict "
            f"of tensors, as `python -m benchmark.export` writes); choose the attack whose fixed trigger it used"
        )
