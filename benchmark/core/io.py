"""Atomic writes: a file either holds its complete new content or its old one, never a torn mix.

A temp file (`mkstemp`) is created 0600 whatever the umask; renamed into place it would stay private, which
breaks a model cache shared by a group on a cluster file system. So every file written here, and every file
or folder a temp name becomes, gets the mode a plain `open()` would give it: 0666 (0777 for folders) less
the umask.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmark.core.errors import DiskFullError


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


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or the user's quota on it


class _Recording:
    """A file wrapper that remembers the OSError its writes raised: torch reports one as a RuntimeError."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a full disk or quota."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _atomic_write(path: Path, write: Any, mode: str, size: int | None = None) -> None:
    path = Path(path)
    tmp = None
    rec = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            rec = _Recording(f)
            write(rec)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if disk_full(exc) or (rec is not None and rec.error is not None and disk_full(rec.error)):
            raise DiskFullError(path.parent, size, f"writing {path.name}") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text), "w", len(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data), "wb", len(data))


def write_probe(folder: Path) -> str | None:
    """Why a file cannot be created in `folder` (None when it can): tried for real, since os.access approves
    pseudo file systems (/proc, /sys) and read-only mounts for root."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return None


def own_home() -> Path:
    """The user's own cache folder (`$BENCHMARK_HOME`, else ~/.cache/backdoor-benchmark): where what a shared
    folder mounted read-only cannot take (model-cache entries, resized datasets) is written instead."""
    return Path(os.environ.get("BENCHMARK_HOME") or Path.home() / ".cache" / "backdoor-benchmark").expanduser()
