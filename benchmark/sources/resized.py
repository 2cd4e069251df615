"""The resized-image tensor file a loader keeps beside its images (`<dataset>_<size>.pt`), so that decoding and
resizing run once.

A lab's data folder may be shared and mounted read-only, holding the images but not this file: then the file is
written to (and later read from) the same dataset folder in the user's own cache, `$BENCHMARK_HOME/data/<name>/`,
as the model cache does with its entries. A file already in the read-only folder is used as it is. Either file is
untrusted (loaded with `weights_only=True`); one that does not load is passed over with a warning and rebuilt
where this user can write, never written over in a read-only folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from benchmark.core.data.images import ImageSet
from benchmark.core.io import atomic_torch_save, own_home, write_probe

log = logging.getLogger(__name__)

KEYS = ("train_x", "train_y", "test_x", "test_y")


def own_folder(root: Path) -> Path | None:
    """The own cache's folder for dataset folder `root` when `root` refuses a new file (None: write in `root`).

    Tried for real (a temp file), since tests and containers run as root, whom `os.access` approves everywhere.
    """
    own = own_home() / "data" / root.name
    if not root.is_dir() or own.resolve() == root.resolve() or write_probe(root) is None:
        return None
    return own


def _read(path: Path, what: str, mmap: bool) -> dict[str, Any] | None:
    """The tensors in `path`, or None (with one warning) when it does not load as a resized-image file."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        if not isinstance(blob, dict) or not all(isinstance(blob.get(k), torch.Tensor) for k in KEYS):
            raise ValueError(f"it does not hold the tensors {', '.join(KEYS)}")
    except Exception as exc:  # torch reports a damaged or refused file under many types
        reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        log.warning("%s: %s is not usable (%s): the images are resized again", what, path, reason)
        return None
    return blob


def load_resized(root: Path, name: str, what: str, mmap: bool = False) -> tuple[ImageSet, ImageSet] | None:
    """(train, test) from `root/name`, else (`root` read-only) from the own cache's copy; None: build them."""
    blob = _read(root / name, what, mmap) if (root / name).exists() else None
    if blob is None and (own := own_folder(root)) is not None and (own / name).exists():
        blob = _read(own / name, what, mmap)
        if blob is not None:
            log.info("%s: resized images loaded from your own cache %s (%s is read-only)", what, own / name, root)
    if blob is None:
        return None
    return ImageSet(blob["train_x"], blob["train_y"]), ImageSet(blob["test_x"], blob["test_y"])


def save_resized(root: Path, name: str, what: str, train: ImageSet, test: ImageSet, **extra: Any) -> None:
    """Keep the tensors as `root/name`, or in the own cache when `root` is read-only (said in the log).

    The file only saves time: when no folder takes it (the own cache unwritable too, or a full disk), the run goes
    on with the images in memory, and one warning says where it looked and how to keep the file next time.
    """
    folder = own_folder(root)
    if folder is None:
        folder = root
    else:
        log.info("%s: %s is read-only; its resized images are kept in your own cache %s", what, root, folder)
    blob = {"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y}
    try:
        atomic_torch_save({**blob, **extra}, folder / name)
    except OSError as exc:  # DiskFullError among them
        reason = exc.strerror or str(exc).splitlines()[0]
        log.warning(
            "%s: the resized images could not be kept as %s (%s), so they will be resized again on the next run; "
            "point BENCHMARK_HOME (or paths.data) to a writable folder to keep them",
            what,
            folder / name,
            reason,
        )
