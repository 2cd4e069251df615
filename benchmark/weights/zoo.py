"""The weights zoo: published backdoored checkpoints, keyed by `dataset/arch/attack` (conf/zoo.yaml).

An entry says where the file lives (Google Drive id or URL), its sha256 (may be unknown: then it is
recorded and printed on first fetch), its format (a checkpoint, or an archive holding several), how
its keys map onto our architecture, and the settings it was trained with — the cell's attack, input
size and normalisation must match them, so that the triggered test set is the one the model learned.

`model.source`: `auto` takes the zoo model when an entry exists and can be fetched, else the model
cache, else trains (one log line says which and why); `zoo` fails when it cannot; `train` never asks
the zoo. Verification failures (a pinned hash that does not match, a checkpoint carrying code, an
archive escaping its directory) stop the run in every mode: they mean the file is not what the zoo says.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from torch import Tensor, nn

from attacks.base import Attack
from benchmark import CONF_DIR
from benchmark.core.errors import BenchmarkError, ConfigError, DiskFullError
from benchmark.core.validation import Checked, bounded
from benchmark.sources.archives import UnsafeArchiveError, extract, sniff
from benchmark.sources.fetch import ChecksumError, Remote, check_sha256, fetch, sha256_file
from benchmark.weights.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    load_strict,
    map_keys,
    pick_member,
    read_checkpoint,
    state_dict_of,
)

log = logging.getLogger(__name__)

ZOO_FILE = Path(CONF_DIR) / "zoo.yaml"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".pkl", ".bin", ".safetensors")
WEIGHT_FILES = ("checkpoint", "safetensors")  # the kinds `sniff` gives a single weights file (not an archive)
# Failures that mean "this file is not what the zoo says", or that training would meet too (a full disk):
# never silently fall back from them.
INTEGRITY_ERRORS = (ChecksumError, UnsafeCheckpointError, UnsafeArchiveError, DiskFullError)
GDRIVE_ID = re.compile(r"[A-Za-z0-9_-]+")  # what Google Drive file ids are made of
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")  # a file name that is safe on every system


class ZooMismatchError(ConfigError):
    """The zoo entry's model was trained under settings other than this cell's."""


@dataclass
class ModelSource(Checked):
    """Where the cell's backdoored model comes from (config node `model`)."""

    source: Literal["auto", "zoo", "train"] = "auto"
    zoo_files: list[str] = field(default_factory=list)  # extra registries, read after conf/zoo.yaml
    zoo_dir: str = "~/.cache/backdoor-benchmark/zoo"
    timeout_s: float = bounded(15.0, 0.1, 3600.0)  # each wait for the server
    deadline_s: float = bounded(1800.0, 1.0, 86400.0)  # the whole download, retries included
    min_rate_kb_s: float = bounded(10.0, 0.01, 1e6)  # slower (kB/s, 1 kB = 1000 bytes): cut off
    retries: int = bounded(2, 0, 20)
    path: str | None = None  # a checkpoint of your own (or BackdoorBench's attack_result.pt): used instead
    state_dict_key: str | None = "state_dict"  # model.path: where the state dict sits in the file, if nested
    strip_prefix: list[str] = field(default_factory=lambda: ["module."])  # model.path: prefixes dropped
    rename: dict[str, str] = field(default_factory=dict)  # model.path: {regex: replacement} on key names


@dataclass
class ZooEntry(Checked):
    """One published checkpoint; see conf/zoo.yaml for the meaning of each field."""

    key: str
    description: str = ""
    gdrive: str | None = None
    url: str | None = None
    file: str | None = None
    sha256: str | None = None
    format: Literal["auto", "checkpoint", "safetensors", "zip", "tar"] = "auto"
    member: str | None = None
    state_dict_key: str | None = "state_dict"
    strip_prefix: list[str] = field(default_factory=lambda: ["module."])
    rename: dict[str, str] = field(default_factory=dict)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    attack: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    trained_with: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.key.split("/")) != 3:
            raise ConfigError(f"zoo entry {self.key!r}: keys are 'dataset/arch/attack'")
        self.remote()  # exactly one of gdrive / url
        check_sha256(self.sha256, f"zoo entry {self.key}: ")
        if self.file is not None and not SAFE_NAME.fullmatch(self.file):
            raise ConfigError(
                f"zoo entry {self.key}: file={self.file!r} is invalid: expected a bare file name "
                "(letters, digits, '.', '_', '-'; not starting with '.')"
            )
        if self.gdrive is not None and not GDRIVE_ID.fullmatch(self.gdrive):
            raise ConfigError(
                f"zoo entry {self.key}: gdrive={self.gdrive!r} is invalid: a Google Drive file id is letters, "
                "digits, '_' and '-' only"
            )

    def remote(self) -> Remote:
        return Remote(gdrive=self.gdrive, url=self.url)

    def cache_name(self) -> str:
        """The file name in the zoo cache; entries sharing one download share it."""
        if self.file:
            return self.file
        if self.gdrive:
            return f"gdrive-{self.gdrive}"
        name = PurePosixPath(str(self.url).split("?")[0].split("#")[0]).name
        if SAFE_NAME.fullmatch(name):
            return name
        return "url-" + hashlib.sha256(str(self.url).encode()).hexdigest()[:16]  # a registry's URL is untrusted


def under(folder: Path, name: str, what: str) -> Path:
    """`folder / name`, refused unless it stays inside `folder` (names from a registry are untrusted)."""
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise UnsafeCheckpointError(f"{what}: the file name {name!r} would be written outside {folder}; refused")
    return path


@dataclass
class ZooModel:
    """A model loaded from the zoo, with what the record needs."""

    model: nn.Module
    sha256: str
    meta: dict[str, Any]


def load_registry(extra: Iterable[str | Path] = ()) -> dict[str, ZooEntry]:
    """Entries of conf/zoo.yaml, then of each extra registry file (a later entry replaces an earlier one)."""
    entries: dict[str, ZooEntry] = {}
    for path in [ZOO_FILE, *map(Path, extra)]:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"zoo registry {path} does not exist (model.zoo_files)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"zoo registry {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"zoo registry {path} must map 'dataset/arch/attack' keys to entries")
        for key, spec in data.items():
            if not isinstance(spec, dict):
                raise ConfigError(f"zoo registry {path}: entry {key!r} must be a mapping")
            try:
                entries[str(key)] = ZooEntry(key=str(key), **spec)
            except TypeError as exc:
                raise ConfigError(f"zoo registry {path}: entry {key!r}: {exc}") from None
    return entries


def _same(a: Any, b: Any) -> bool:
    """Config equality that forgives int/float and list/tuple differences and float rounding."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def check_fits(entry: ZooEntry, settings: dict[str, Any]) -> None:
    """The cell must ask for the model the entry holds: same attack settings, arch kwargs and input.

    `settings` is the cell's flat view: `attack.<param>`, `arch.kwargs.<name>` and `dataset.<field>`.
    """
    absent = {"attack": "<no such parameter>", "arch": "<default>", "dataset": "<no such field>"}
    want = {
        **{f"attack.{k}": v for k, v in entry.attack.items()},
        **{f"arch.kwargs.{k}": v for k, v in entry.arch_kwargs.items()},
        **{f"dataset.{k}": v for k, v in entry.input.items()},
    }
    have = {k: settings.get(k, absent[k.split(".")[0]]) for k in want}
    extra_kwargs = sorted(k for k in settings if k.startswith("arch.kwargs.") and k not in want)
    diffs = [f"{k}={want[k]!r} (this cell: {have[k]!r})" for k in want if not _same(want[k], have[k])]
    diffs += [f"{k} unset (this cell: {settings[k]!r})" for k in extra_kwargs]
    if diffs:
        raise ZooMismatchError(
            f"zoo entry {entry.key} was trained with " + ", ".join(diffs) + "; set those values to use it, "
            "or model.source=train to train a model for this cell"
        )


def _checkpoints_in(folder: Path) -> list[str]:
    """Checkpoint-looking files under an extracted archive, as sorted relative posix paths."""
    names = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        hidden = any(part.startswith((".", "__MACOSX")) for part in rel.parts)
        if p.is_file() and not hidden and p.name.lower().endswith(CHECKPOINT_SUFFIXES) and sniff(p) in WEIGHT_FILES:
            names.append(rel.as_posix())
    return sorted(names)


def locate(path: Path, entry: ZooEntry, digest: str) -> tuple[Path, str | None]:
    """The checkpoint file inside the download: the file itself, or the chosen member of an archive."""
    kind = sniff(path, entry.format)
    if entry.format != "auto" and kind != entry.format:
        raise CheckpointError(f"zoo entry {entry.key} says format={entry.format!r} but {path} is a {kind}")
    if kind in WEIGHT_FILES:
        if entry.member:
            log.info("zoo entry %s: %s is a single checkpoint; member %r not needed", entry.key, path, entry.member)
        return path, None
    folder = extract(path, path.with_name(f"{path.name}.{digest[:12]}.d"), kind)
    member = pick_member(_checkpoints_in(folder), entry.member, f"archive {path.name}")
    return folder / member, member


def load_entry(entry: ZooEntry, cfg: ModelSource, attack: Attack, build: Callable[[], nn.Module]) -> ZooModel:
    """Fetch, verify and load the entry's checkpoint into a new model (and restore a learned trigger)."""
    fetched = fetch(
        entry.remote(),
        under(Path(cfg.zoo_dir).expanduser(), entry.cache_name(), f"zoo entry {entry.key}"),
        entry.sha256,
        timeout_s=cfg.timeout_s,
        deadline_s=cfg.deadline_s,
        min_rate_kb_s=cfg.min_rate_kb_s,
        retries=cfg.retries,
        what=f"zoo checkpoint {entry.key}",
    )
    ckpt, member = locate(fetched.path, entry, fetched.sha256)
    try:
        obj = read_checkpoint(ckpt)
    except CheckpointError as exc:
        if isinstance(exc, UnsafeCheckpointError):
            raise
        hint = f"cached from {entry.remote().public()}: delete {fetched.path} to fetch it again"
        raise CheckpointError(f"{exc} ({hint})") from exc
    state = map_keys(state_dict_of(obj, entry.state_dict_key), entry.strip_prefix, entry.rename)
    model = build()
    net = getattr(model, "net", model)  # `Classifier` wraps the bare architecture the checkpoint describes
    load_strict(net, state, f"zoo checkpoint {entry.key} ({ckpt.name})")
    trigger = obj.get("trigger") if isinstance(obj, dict) else None
    if trigger:
        device = next(model.parameters()).device  # the trigger is applied where the test images live
        attack.load_trigger_state({k: v.to(device) for k, v in trigger.items() if isinstance(v, Tensor)})
    elif type(attack).trigger_state is not Attack.trigger_state:
        raise CheckpointError(
            f"zoo entry {entry.key}: {type(attack).__name__} learns its trigger, but the checkpoint carries none "
            f"(a `trigger` dict of tensors, as `python -m benchmark.export` writes)"
        )
    digest = fetched.sha256 if member is None else sha256_file(ckpt)
    info = {"entry": entry.key, "file": fetched.path.name, "file_sha256": fetched.sha256, "member": member}
    return ZooModel(model, digest, {"sha256": digest, "zoo": info, **_stored_meta(obj)})


def _stored_meta(obj: Any) -> dict[str, Any]:
    """Metadata a checkpoint carries (ours: `meta`; RNP's: epoch, clean_acc, bad_acc), for the record."""
    if not isinstance(obj, dict):
        return {}
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    return {"checkpoint_meta": {**{k: obj[k] for k in ("epoch", "clean_acc", "bad_acc") if k in obj}, **meta}}


def model_from_zoo(
    cfg: ModelSource, key: str, settings: dict[str, Any], attack: Attack, build: Callable[[], nn.Module]
) -> ZooModel | None:
    """The model for zoo key `dataset/arch/attack`, or None when the cell should use the cache or train.

    `settings` is the cell's flat view that `check_fits` compares with the entry (logged once either way).
    """
    if cfg.source == "train":
        log.info("model: model.source=train, the zoo is not consulted: using the model cache, else training")
        return None
    registry = load_registry(cfg.zoo_files)
    entry = registry.get(key)
    if entry is None:
        if cfg.source == "zoo":
            known = ", ".join(sorted(registry))
            raise ConfigError(f"model.source=zoo but the zoo has no entry {key}; entries: {known}")
        log.info("model: no zoo entry for %s (model.source=auto): using the model cache, else training", key)
        return None
    try:
        check_fits(entry, settings)
        found = load_entry(entry, cfg, attack, build)
    except INTEGRITY_ERRORS:
        raise
    except BenchmarkError as exc:
        if cfg.source == "zoo":
            raise
        why = str(exc).splitlines()[0].rstrip(".")
        log.warning("model: zoo entry %s not usable (%s); model.source=auto: using the cache, else training", key, why)
        return None
    log.info("model: from the zoo, entry %s (sha256 %s)", key, found.sha256)
    return found
