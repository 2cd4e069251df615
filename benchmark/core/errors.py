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


INTERRUPTED_EXIT = 130  # the shell's code for a process stopped by SIGINT (128 + 2)


def stop_interrupted(what: str, then: str) -> NoReturn:
    """Ctrl-C: one line saying what stopped and how to go on, instead of a KeyboardInterrupt traceback."""
    print(f"Interrupted (Ctrl-C): {what}. {then}", file=sys.stderr, flush=True)
    raise SystemExit(INTERRUPTED_EXIT)
