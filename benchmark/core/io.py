"""Atomic writes: a file either holds its complete new content or its old one, never a torn mix.

A temp file (`mkstemp`) is created 0600 whatever the umask; renamed into place it would stay private, which
breaks a model cache shared by a group on a cluster file system. So every file written here, and every file
or folder a temp name becomes, gets the mode a plain `open()` would give it: 0666 (0777 for folders) less
the umask.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def current_umask() -> int:
    """The process's umask (read without changing it where Linux shows it; else set and restored at once)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path) -> None:
    """Give `path` (a temp file or folder about to be renamed into place) the mode a normal write would."""
    path = Path(path)
    full = 0o777 if path.is_dir() else 0o666
    path.chmod(full & ~current_umask())


def _atomic_write(path: Path, write: Any, mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data), "wb")
