"""The dataset registry: a loader per name, and the one clear message for data that is not there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmark.core.data.images import ImageSet
from benchmark.core.errors import ConfigError, DataMissingError
from benchmark.sources.source import OFFLINE_HINT, Source

__all__ = [
    "OFFLINE_HINT",
    "Loader",
    "Source",
    "download_failed",
    "load_dataset",
    "loader_names",
    "missing",
    "register_loader",
]

Loader = Callable[[Path, Source], tuple[ImageSet, ImageSet]]
_LOADERS: dict[str, Loader] = {}


def register_loader(name: str) -> Callable[[Loader], Loader]:
    """Register a dataset loader under `name`; a duplicate name is a bug and raises."""

    def wrap(fn: Loader) -> Loader:
        if name in _LOADERS:
            raise KeyError(f"dataset loader {name!r} registered twice")
        _LOADERS[name] = fn
        return fn

    return wrap


def loader_names() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, root: Path, download: bool | Source) -> tuple[ImageSet, ImageSet]:
    """Load `(train, test)` of dataset `name` from `root/<name>`, downloading it if allowed.

    `download` is the `Source` built from the composed `dataset` config (where from, which hashes, which size),
    or a bool for data that needs no archive named (the embedded subset, files already in place).
    """
    if name not in _LOADERS:
        raise ConfigError(f"Unknown dataset {name!r}; choose from {', '.join(loader_names())}")
    source = download if isinstance(download, Source) else Source(download=download)
    return _LOADERS[name](Path(root).expanduser() / name, source)


def missing(name: str, root: Path, expected: str, how: str, reason: str) -> DataMissingError:
    return DataMissingError(
        f"Dataset {name!r} not found in {root} (expected {expected}). {reason}\n"
        f"To install it by hand: {how}\n"
        f"Or point paths.data at a directory that holds it. {OFFLINE_HINT}"
    )


def download_failed(exc: BaseException) -> str:
    return f"Download failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
