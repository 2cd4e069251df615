"""Loading checkpoints we did not write, without running anything they carry.

A safetensors file holds tensors and a header of strings: reading one cannot run code. A torch file is
read with `torch.load(weights_only=True)`, which unpickles only tensors and plain containers; a file
holding any other pickled object (a whole pickled model, or a payload that calls code) is refused with a
clear error. What we write (the model cache, exports) is safetensors in our layout: each tensor named
`<group>.<name>` (groups `state_dict` and `trigger`, the keys of the older `.pt` dicts) and the header
tagged with `LAYOUT`, so that reading it back gives the same `{"state_dict": ..., "trigger": ...}` dict
as those did; an untagged safetensors file (anyone else's) reads as the flat state dict it is.
Keys are matched strictly: a missing, unexpected or misshapen key is an error that lists them (the RNP
reference silently kept random weights for keys it could not match).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from benchmark.core.errors import BenchmarkError
from benchmark.sources.archives import looks_like_safetensors

# BatchNorm's step counter is bookkeeping, not a weight; checkpoints from before PyTorch 0.4.1 lack it.
OPTIONAL_SUFFIXES = ("num_batches_tracked",)
SHOW = 8  # keys listed per kind of mismatch
SAFETENSORS_SUFFIX = ".safetensors"
# The header tag of our grouped layout ("format": "pt" is the tag other tools look for).
LAYOUT = {"format": "pt", "layout": "backdoor-benchmark.groups.v1"}


class CheckpointError(BenchmarkError):
    """A checkpoint cannot be read or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds pickled objects beyond tensors and plain containers: loading it could run code."""


def read_checkpoint(path: Path) -> Any:
    """The content of `path`, restricted to tensors and plain containers (nothing is executed).

    A safetensors file (by its suffix, or by its header: a Drive download has no suffix) is read as one;
    anything else as a torch file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise CheckpointError(f"{path} is an HTML page, not a checkpoint (an error or sign-in page saved instead?)")
    if path.suffix.lower() == SAFETENSORS_SUFFIX or looks_like_safetensors(head):
        return parse_safetensors(path.read_bytes(), str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(exc)}") from None
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it holds pickled Python objects other than tensors and plain containers "
            f"(unsupported global {found[1]}). Loading it could run arbitrary code, so it was not loaded. "
            f"Use a checkpoint saved as a plain state dict: torch.save(model.state_dict(), path)."
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError... for damaged files
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupted?): {_first_line(exc)}"
        ) from exc


def encode_safetensors(groups: Mapping[str, Mapping[str, Tensor]]) -> bytes:
    """The safetensors bytes of named groups of tensors, in our layout (see the module docstring).

    Each tensor is copied to a contiguous CPU tensor of its own: safetensors refuses views, shared storage
    and the channels_last weights our models train with.
    """
    flat: dict[str, Tensor] = {}
    for group, tensors in groups.items():
        if not group or "." in group:
            raise ValueError(f"group name {group!r}: a group is a non-empty name without dots")
        for name, t in tensors.items():
            flat[f"{group}.{name}"] = t.detach().cpu().clone(memory_format=torch.contiguous_format)
    return safetensors.torch.save(flat, metadata=dict(LAYOUT))


def parse_safetensors(data: bytes, where: str) -> dict[str, Any]:
    """The tensors in safetensors `data`: grouped (`{"state_dict": {...}, "trigger": {...}}`) when tagged
    with our layout, else the flat dict. A damaged file is a one-line CheckpointError naming `where`.

    Names come in sorted order: safetensors hands them out in an order that changes from process to process.
    """
    try:
        loaded = safetensors.torch.load(data)
        flat = {name: loaded[name] for name in sorted(loaded)}
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    except Exception as exc:  # safetensors raises SafetensorError (and others) for damaged files
        raise CheckpointError(
            f"{where} is not a readable safetensors file (truncated or corrupted?): {_first_line(exc)}"
        ) from None
    if (header.get("__metadata__") or {}).get("layout") != LAYOUT["layout"]:
        return flat
    grouped: dict[str, dict[str, Tensor]] = {}
    for key, value in flat.items():
        group, dot, name = key.partition(".")
        if not dot:
            raise CheckpointError(f"{where}: tensor {key!r} is not named <group>.<name> as its layout tag says")
        grouped.setdefault(group, {})[name] = value
    return grouped


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "Unsupported operand" in ln), lines[0] if lines else "")
    return f"{type(exc).__name__}: {detail}"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def state_dict_of(obj: Any, key: str | None = "state_dict") -> dict[str, Tensor]:
    """The state dict in a checkpoint: `obj[key]` if present (RNP: `{"state_dict": ..., "epoch": ...}`), else `obj`."""
    if isinstance(obj, Mapping) and key is not None and key in obj:
        obj = obj[key]
    if not _is_state_dict(obj):
        found = sorted(map(str, obj))[:SHOW] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint holds neither a state dict (names -> tensors) nor {{{key!r}: state dict}}; found {found}"
        )
    return dict(obj)


def map_keys(state: Mapping[str, Tensor], strip_prefix: Sequence[str] = (), rename: Mapping[str, str] = ()) -> dict:
    """Rename keys: drop the first matching prefix (e.g. DataParallel's `module.`), then regex renames in order."""
    out: dict[str, Tensor] = {}
    rules = [(re.compile(pattern), repl) for pattern, repl in dict(rename).items()]
    for name, value in state.items():
        new = next((name[len(p) :] for p in strip_prefix if name.startswith(p)), name)
        for pattern, repl in rules:
            new = pattern.sub(repl, new)
        if new in out:
            raise CheckpointError(f"key mapping sends two keys to {new!r} (one of them {name!r})")
        out[new] = value
    return out


def _listing(label: str, keys: Sequence[str]) -> str:
    more = f" ... and {len(keys) - SHOW} more" if len(keys) > SHOW else ""
    return f"{label} ({len(keys)}): {', '.join(keys[:SHOW])}{more}"


def load_strict(net: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Load `state` into `net`, failing with every missing, unexpected and misshapen key listed."""
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            _listing(label, keys)
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
            if keys
        ]
        raise CheckpointError(
            f"{where} does not fit the model: " + "; ".join(parts) + ". "
            "Check the arch and its kwargs, the dataset's class count, or the key mapping (strip_prefix, rename)."
        )
    full = {k: state.get(k, v) for k, v in own.items()}
    net.load_state_dict(full, strict=True)


def pick_member(names: Sequence[str], pattern: str | None, where: str) -> str:
    """The one checkpoint in an archive matching the glob `pattern` (case-insensitive; any when None)."""
    matches = [n for n in names if pattern is None or fnmatch.fnmatch(n.lower(), pattern.lower())]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    if not matches:
        wanted = f"matching {pattern!r}" if pattern else "at all"
        raise CheckpointError(f"{where} holds no checkpoint {wanted}; it holds: {listed or 'nothing'}")
    raise CheckpointError(
        f"{where} holds {len(matches)} checkpoints{f' matching {pattern!r}' if pattern else ''}: {listed}. "
        f"Set the zoo entry's `member` to a pattern that picks one."
    )


def weights_digest(model: nn.Module) -> str:
    """`sha256:<hex>` of the model's state dict: each entry's name, dtype, shape and bytes, in name order.

    The checkpoint file's own sha256 (`model_sha256`) also covers its metadata (training seconds), so two
    trainings of one cell that give bit-identical weights still differ there; this digest is equal then, and
    tells whether two results (two machines, two code versions) started from the very same backdoored model.
    """
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()
