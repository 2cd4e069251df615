"""ImageNet-12: the 12-class ImageNet subset of the RNP paper, as uint8 tensors at 224x224.

The archive (Google Drive, id in conf/dataset/imagenet12.yaml `files.archive`) is fetched with gdown into
`<data>/imagenet12/`, extracted safely,
and searched for its train and validation class folders whatever its top-level layout (a wrapping
folder or two, `val`/`validation`/`test`, nested zip/tar archives, macOS `__MACOSX` debris). Images are
decoded once, resized to 224x224 (`dataset.size`; no crop: the whole image, as `Resize((224, 224))`) and
kept as a tensor file, so later runs load tensors. Class indices follow sorted folder names (ImageFolder's rule).
Files placed by hand work too: an archive saved under the name below, or the folders extracted anywhere
under `<data>/imagenet12/`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.core.data.images import ImageSet
from benchmark.core.errors import DataMissingError
from benchmark.core.progress import Progress
from benchmark.sources.archives import archive_stem, extract, sniff
from benchmark.sources.fetch import Fetched, FetchError, fetch
from benchmark.sources.registry import OFFLINE_HINT, register_loader
from benchmark.sources.resized import load_resized, save_resized
from benchmark.sources.source import FileSpec, Source, extract_fetched

log = logging.getLogger(__name__)

ARCHIVE = "imagenet12-archive"
DEADLINE_S = 6 * 3600.0  # the whole archive download; the minimum rate (fetch's default, 10 kB/s) cuts a stall
SIZE = 224
TRAIN_NAMES = ("train", "training")
TEST_NAMES = ("val", "validation", "valid", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
MAX_DEPTH = 5


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith((".", "__MACOSX")) for part in path.relative_to(base).parts)


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and _visible(p, folder)
    )


def _class_dirs(folder: Path) -> list[Path]:
    """Subfolders holding images (ImageFolder's classes), sorted by name."""
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p, folder))
    return [p for p in subs if _images(p)]


def _dirs(base: Path) -> Iterator[Path]:
    """Visible directories under `base`, breadth first, at most MAX_DEPTH deep."""
    level = [base]
    for _ in range(MAX_DEPTH):
        level = sorted(p for d in level for p in d.iterdir() if p.is_dir() and _visible(p, base))
        yield from level


def _split_dirs(base: Path, names: tuple[str, ...]) -> list[Path]:
    """Folders named like a split that hold at least two class folders."""
    return [d for d in _dirs(base) if d.name.lower() in names and len(_class_dirs(d)) >= 2]


def _flat_test(train: Path) -> Path | None:
    """A val folder beside `train` holding images directly (ImageNet's own val layout), if any."""
    beside = (s for s in sorted(train.parent.iterdir()) if s.is_dir() and s.name.lower() in TEST_NAMES)
    return next((s for s in beside if _images(s) and not _class_dirs(s)), None)


def find_splits(base: Path) -> tuple[Path, Path] | None:
    """The (train, val) folders under `base`: siblings named train/val (or variants) holding class folders.

    Without siblings, a single train folder and a single val folder anywhere (e.g. from train.tar and
    val.zip nested in the archive) pair up.
    """
    trains, tests = _split_dirs(base, TRAIN_NAMES), _split_dirs(base, TEST_NAMES)
    pairs = [(t, v) for t in trains for v in tests if v.parent == t.parent]
    if not pairs and len(trains) == 1 and len(tests) == 1:
        pairs = [(trains[0], tests[0])]
    if len(pairs) > 1:
        listed = "; ".join(f"{a} + {b}" for a, b in pairs)
        raise DataMissingError(f"ImageNet-12: several train/val folder pairs under {base}: {listed}. Keep one.")
    flat = next((f for t in trains if (f := _flat_test(t)) is not None), None)
    if not pairs and flat is not None:
        raise DataMissingError(
            f"ImageNet-12: {flat} holds images but no class folders (the flat ImageNet val layout); "
            f"arrange them as {flat}/<class>/<image>, like the train folder"
        )
    return pairs[0] if pairs else None


def _extract_nested(folder: Path) -> bool:
    """Extract archives found inside an extracted archive (e.g. train.tar + val.zip); True if any."""
    found = False
    for p in sorted(folder.rglob("*")):
        stem = archive_stem(p)
        if stem and p.is_file() and _visible(p, folder) and sniff(p) in ("zip", "tar"):
            # train.tar -> train/, whether it holds train/<class>/... or <class>/... directly
            extract(p, p.with_name(stem) if not p.with_name(stem).exists() else p.with_name(p.name + ".d"))
            found = True
    return found


def _how(root: Path, spec: FileSpec, source: Source) -> str:
    return (
        f"download {spec.remote(source.mirror).public()}\nand save it as {root / ARCHIVE}, "
        f"or extract it anywhere under {root} (train/ and val/ folders of class folders). {OFFLINE_HINT}"
    )


def _fetch_archive(root: Path, source: Source) -> Fetched:
    """The archive in `root` (downloaded if allowed) and its sha256; missing data becomes one clear message."""
    spec = source.file("imagenet12", "archive")
    if not source.download and not (root / ARCHIVE).exists():
        raise DataMissingError(
            f"Dataset 'imagenet12' not found in {root} and dataset.download=false.\n"
            f"To install it by hand: {_how(root, spec, source)}"
        )
    try:
        remote = spec.remote(source.mirror)
        return fetch(
            remote,
            root / ARCHIVE,
            spec.sha256,
            md5=spec.md5,
            timeout_s=source.timeout_s,
            deadline_s=DEADLINE_S,
            what="ImageNet-12 archive",
        )
    except FetchError as exc:
        raise DataMissingError(f"{exc}\nOr extract it by hand anywhere under {root}. {OFFLINE_HINT}") from exc


def locate(root: Path, source: Source) -> tuple[Path, Path]:
    """The train and val folders: already under `root`, else from the (fetched) archive."""
    root.mkdir(parents=True, exist_ok=True)
    found = find_splits(root)
    if found:
        return found
    fetched = _fetch_archive(root, source)
    archive = fetched.path
    folder = extract_fetched(
        [fetched], root / f"extracted-{fetched.sha256[:12]}", "imagenet12"
    )  # new archive: new folder
    found = find_splits(folder) or (find_splits(folder) if _extract_nested(folder) else None)
    if found is None:
        tops = ", ".join(sorted(p.name for p in folder.iterdir())[:20]) or "nothing"
        raise DataMissingError(
            f"ImageNet-12: no train/ and val/ folders of class folders in {archive} (extracted to {folder}; "
            f"top level: {tops}). Arrange it by hand under {root} as train/<class>/<image> and val/<class>/<image>."
        )
    return found


def decode(path: Path, size: int = SIZE) -> torch.Tensor:
    """One image file -> (3, size, size) uint8 (RGB, resized without crop)."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when the image is much larger
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
    except (OSError, ValueError) as exc:
        raise DataMissingError(f"ImageNet-12: cannot decode {path}: {exc}") from exc


def read_folder(folder: Path, classes: list[str], size: int = SIZE) -> ImageSet:
    """An ImageFolder tree as one (N, 3, size, size) uint8 tensor, decoded once."""
    files = [(p, i) for i, c in enumerate(classes) for p in _images(folder / c)]
    x = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    progress = Progress(f"decoding {folder.name}", len(files), "image", logger=log)
    for n, (p, _) in enumerate(files):
        x[n] = decode(p, size)
        progress.update()
    progress.close()
    return ImageSet(x, torch.tensor([i for _, i in files], dtype=torch.int64))


@register_loader("imagenet12")
def load(root: Path, source: Source) -> tuple[ImageSet, ImageSet]:
    """(train, test) at `dataset.size` (224) from the tensor cache, else from the folders (fetched when needed)."""
    size = source.size or SIZE
    cached = f"imagenet12_{size}.pt"
    if (loaded := load_resized(root, cached, "ImageNet-12", mmap=True)) is not None:  # ~2 GB: no second copy
        return loaded
    train_dir, test_dir = locate(root, source)
    classes = [p.name for p in _class_dirs(train_dir)]
    test_classes = [p.name for p in _class_dirs(test_dir)]
    if test_classes != classes:
        only = sorted(set(classes) ^ set(test_classes))
        raise DataMissingError(f"ImageNet-12: {train_dir} and {test_dir} have different class folders: {only}")
    log.info("ImageNet-12: %d classes in %s and %s; resizing to %d px once", len(classes), train_dir, test_dir, size)
    train, test = read_folder(train_dir, classes, size), read_folder(test_dir, classes, size)
    save_resized(root, cached, "ImageNet-12", train, test, classes=classes)
    return train, test
