"""The dataset loaders: the embedded subset, Fashion-MNIST, CIFAR-10/100 and GTSRB (ImageNet-12: imagenet12.py).

Each is registered by name and returns `(train, test)` as uint8 `ImageSet`s. CIFAR and GTSRB archives are
fetched by the project (`source.py`: configurable URL or mirror, md5/sha256, safe extraction) into the
layout torchvision uses, so folders torchvision downloaded before are used as they are.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.core.data.images import ImageSet
from benchmark.core.errors import ConfigError, DataMissingError
from benchmark.sources.idx import idx_pair
from benchmark.sources.registry import Loader, download_failed, missing, register_loader
from benchmark.sources.resized import load_resized, save_resized
from benchmark.sources.source import Source, extract_fetched, fetch_archive

EMBEDDED_DIR = Path(__file__).parent / "fashion_mnist_subset"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@register_loader("embedded")
def load_embedded(root: Path, source: Source) -> tuple[ImageSet, ImageSet]:
    """The vendored Fashion-MNIST subset: real data, offline, used by the quickstart and the tests."""
    train, test = idx_pair(EMBEDDED_DIR, "train"), idx_pair(EMBEDDED_DIR, "t10k")
    if train is None or test is None:
        raise DataMissingError(f"The embedded subset is missing from {EMBEDDED_DIR}; reinstall the package")
    return train, test


@register_loader("fashion_mnist")
def load_fashion_mnist(root: Path, source: Source) -> tuple[ImageSet, ImageSet]:
    """Fashion-MNIST from root, else Debian's `dataset-fashion-mnist` files, else torchvision's download."""
    for folder in (root, root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST):
        train, test = idx_pair(folder, "train"), idx_pair(folder, "t10k")
        if train is not None and test is not None:
            return train, test
    if not source.download:
        raise missing("fashion_mnist", root, "train/t10k IDX files", _FMNIST_HOW, "dataset.download=false.")
    try:
        from torchvision.datasets import FashionMNIST

        tr, te = (FashionMNIST(str(root), train=t, download=True) for t in (True, False))
    except Exception as exc:  # any network or archive failure becomes one clear message
        raise missing("fashion_mnist", root, "train/t10k IDX files", _FMNIST_HOW, download_failed(exc)) from exc
    return (ImageSet(d.data.unsqueeze(1).clone(), d.targets.long().clone()) for d in (tr, te))  # type: ignore[return-value]


_FMNIST_HOW = "apt-get install dataset-fashion-mnist, or copy the four *-ubyte.gz files into that directory."


# The pickled CIFAR batches hold numpy arrays and plain containers only; anything else is refused, so a
# file from a mirror cannot run code while it is read (pickle.load would run whatever it names).
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array rebuilder, whatever its module is called
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the published files (pickled by numpy 1.x)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the same pickled by numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles an array's bytes at protocol 2
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[module, name]
        raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays are expected)")


def read_batch(path: Path) -> dict[str, Any]:
    """One pickled CIFAR batch (Python 2 pickle: `latin1` turns its byte strings back into str and arrays)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataMissingError(f"{path} is not a readable CIFAR batch: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise DataMissingError(f"{path} is not a CIFAR batch: it holds a {type(obj).__name__}, not a dict")
    return obj


def _read_split(folder: Path, files: tuple[str, ...], label_key: str) -> ImageSet:
    """Batches `files` of a CIFAR folder as (N, 3, 32, 32) uint8 images (rows are R, G, B planes) and labels."""
    xs, ys = [], []
    for name in files:
        batch = read_batch(folder / name)
        data, labels = batch.get("data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataMissingError(f"{folder / name}: 'data' must be an (N, 3072) uint8 array, got {_what(data)}")
        if not isinstance(labels, list) or len(labels) != len(data):
            raise DataMissingError(f"{folder / name}: {label_key!r} must list one label per image, got {_what(labels)}")
        xs.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        ys.append(torch.tensor(labels, dtype=torch.int64))
    return ImageSet(torch.cat(xs), torch.cat(ys))


def _what(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {value.shape}"
    return f"{type(value).__name__} of {len(value)}" if hasattr(value, "__len__") else type(value).__name__


def _cifar(name: str, folder: str, train: tuple[str, ...], test: tuple[str, ...], label_key: str) -> Loader:
    """A CIFAR loader: `root/<folder>` if there (by hand, or torchvision's earlier download), else the archive.

    torchvision's own reader is not used: it checks every extracted batch against md5s hard-coded for the
    published files, so it refuses any other copy (a re-packed mirror, a test stand-in) and its
    `pickle.load` runs whatever a file names; the format itself is five lines to read.
    """

    def load(root: Path, source: Source) -> tuple[ImageSet, ImageSet]:
        if source.size not in (None, 32):
            raise ConfigError(f"dataset.size={source.size} is invalid for {name}: its images are 32x32 (allowed: 32)")
        base = root / folder
        if not base.is_dir():
            spec = source.file(name, "archive")
            if not source.download and not (root / spec.name).exists():
                how = f"download {spec.remote(source.mirror).public()} and extract it into {root} (giving {base}/)."
                raise missing(name, root, f"{folder}/", how, "dataset.download=false.")
            fetched = fetch_archive(source, name, "archive", root)
            base = extract_fetched([fetched], root / f"extracted-{fetched.sha256[:12]}", name) / folder
            if not base.is_dir():
                raise DataMissingError(f"Dataset {name!r}: {fetched.path} does not hold the folder {folder}/")
        return _read_split(base, train, label_key), _read_split(base, test, label_key)

    return load


register_loader("cifar10")(
    _cifar("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels")
)
register_loader("cifar100")(_cifar("cifar100", "cifar-100-python", ("train",), ("test",), "fine_labels"))

GTSRB_PARTS = ("GTSRB/Training", "GTSRB/Final_Test/Images", "GT-final_test.csv")  # torchvision's layout


@register_loader("gtsrb")
def load_gtsrb(root: Path, source: Source) -> tuple[ImageSet, ImageSet]:
    """GTSRB: the three published zips extracted into torchvision's layout, read by torchvision, resized once.

    The resized images are cached as a tensor file beside the images (`gtsrb_<size>.pt`; a read-only data
    folder's in the user's own cache: resized.py).
    """
    size = source.size or 32
    cached = f"gtsrb_{size}.pt"
    if (loaded := load_resized(root, cached, "gtsrb")) is not None:
        return loaded
    base = root / "gtsrb"  # torchvision's GTSRB(root) reads root/gtsrb/
    if not base.exists():
        archives = [fetch_archive(source, "gtsrb", role, root) for role in ("train", "test_images", "test_gt")]
        extract_fetched(archives, base, "gtsrb")
    absent = [p for p in GTSRB_PARTS if not (base / p).exists()]
    if absent:
        raise DataMissingError(
            f"Dataset 'gtsrb': {base} lacks {', '.join(absent)} (torchvision's layout: GTSRB/Training/<class>/*.ppm, "
            f"GTSRB/Final_Test/Images/*.ppm, GT-final_test.csv). Delete {base} to download the archives again."
        )
    import torchvision.datasets as tvd

    sets = [tvd.GTSRB(str(root), split=s, download=False) for s in ("train", "test")]
    train, test = (_resize_pil_dataset(s, size) for s in sets)
    save_resized(root, cached, "gtsrb", train, test)
    return train, test


def _resize_pil_dataset(dataset: torch.utils.data.Dataset, size: int) -> ImageSet:
    """One-off conversion of a PIL dataset to a uint8 tensor (runs once, then the tensor file is used)."""
    images, labels = [], []
    for img, label in dataset:  # type: ignore[attr-defined]
        arr = np.array(img.convert("RGB").resize((size, size)), dtype=np.uint8)  # a writable copy (torch needs one)
        images.append(torch.from_numpy(arr).permute(2, 0, 1))
        labels.append(int(label))
    return ImageSet(torch.stack(images), torch.tensor(labels))
