"""User-facing errors: the entry point prints their message alone, without a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn


class BenchmarkError(Exception):
    """An error the user can fix (bad value, missing data); shown as one clear message."""


class ConfigError(BenchmarkError, ValueError):
    """A config value is of the wrong type or out of its allowed range."""


class DataMissingError(BenchmarkError, FileNotFoundError):
    """A dataset or checkpoint is not on disk and could not be downloaded."""


def human_size(n: float) -> str:
    """Bytes for a message: 812 B, 3.2 KiB, 400.0 MiB, 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class DiskFullError(BenchmarkError, OSError):
    """No space left where a file or folder was being written (nothing half-written is left)."""

    def __init__(self, folder: object, needed: int | None, what: str) -> None:
        self.folder = folder
        need = "more space" if needed is None else f"about {human_size(needed)}"
        super().__init__(
            f"No space left on the device holding {folder} while {what}: it needs {need}. Nothing half-written "
            f"was left; free space there (or point the setting that names this folder elsewhere) and rerun."
        )


INTERRUPTED_EXIT = 130  # the shell's code for a process stopped by SIGINT (128 + 2)


def stop_interrupted(what: str, then: str) -> NoReturn:
    """Ctrl-C: one line saying what stopped and how to go on, instead of a KeyboardInterrupt traceback."""
    print(f"Interrupted (Ctrl-C): {what}. {then}", file=sys.stderr, flush=True)
    raise SystemExit(INTERRUPTED_EXIT)
