"""Datasets as whole uint8 tensors: train (for backdoor training), reserve (clean, never trained on), test.

Every loader returns `(train, test)` as `ImageSet`s of (N, C, H, W) uint8 images and int64 labels;
`make_splits` then sets aside the reserve pool that defense data is drawn from.
"""

from __future__ import annotations

import gzip
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmark.errors import ConfigError, DataMissingError

log = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).parent / "data" / "fashion_mnist_subset"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
OFFLINE_HINT = "For an offline run on embedded data use: python -m benchmark experiment=quickstart"


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) uint8 with labels (N,) int64, kept together so they are indexed together."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(self.x.shape)} {self.x.dtype}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"labels {tuple(self.y.shape)} do not match {self.x.shape[0]} images")

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index: Tensor) -> ImageSet:
        return ImageSet(self.x[index], self.y[index])

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class DataSplits:
    """The three disjoint parts of a dataset; `reserve` is clean and never used for backdoor training."""

    train: ImageSet
    reserve: ImageSet
    test: ImageSet
    num_classes: int


Loader = Callable[[Path, bool], tuple[ImageSet, ImageSet]]
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


def load_dataset(name: str, root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """Load `(train, test)` of dataset `name` from `root/<name>`, downloading it if allowed."""
    if name not in _LOADERS:
        raise ConfigError(f"Unknown dataset {name!r}; choose from {', '.join(loader_names())}")
    return _LOADERS[name](Path(root).expanduser() / name, download)


def make_splits(
    train: ImageSet,
    test: ImageSet,
    num_classes: int,
    reserve: int,
    split_seed: int,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> DataSplits:
    """Hold out `reserve` clean training images (fixed by `split_seed`, so every cell shares them)."""
    if reserve >= len(train):
        raise ConfigError(f"dataset.reserve={reserve} must be smaller than the {len(train)} training images")
    found = int(torch.cat([train.y, test.y]).max()) + 1
    if found > num_classes:
        raise ConfigError(f"dataset.num_classes={num_classes} but labels go up to {found - 1}")
    gen = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(len(train), generator=gen)
    reserve_set = train.subset(order[:reserve])
    rest = order[reserve:]
    if train_limit is not None:
        rest = rest[:train_limit]
    if test_limit is not None and test_limit < len(test):
        test = test.subset(torch.randperm(len(test), generator=gen)[:test_limit])
    return DataSplits(train.subset(rest), reserve_set, test, num_classes)


# --- file formats -------------------------------------------------------------------------------


def read_idx(path: Path) -> Tensor:
    """Read an IDX file (the MNIST family's format), gzipped or not, as a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return torch.from_numpy(array.copy())


def write_idx(path: Path, array: Tensor) -> None:
    """Write a uint8 tensor as a gzipped IDX file (used to vendor the embedded subset)."""
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + array.contiguous().numpy().tobytes())


def _idx_pair(folder: Path, prefix: str) -> ImageSet | None:
    images = next(iter(sorted(folder.glob(f"{prefix}-images-idx3-ubyte*"))), None)
    labels = next(iter(sorted(folder.glob(f"{prefix}-labels-idx1-ubyte*"))), None)
    if images is None or labels is None:
        return None
    return ImageSet(read_idx(images).unsqueeze(1), read_idx(labels).long())


def _missing(name: str, root: Path, expected: str, how: str, reason: str) -> DataMissingError:
    return DataMissingError(
        f"Dataset {name!r} not found in {root} (expected {expected}). {reason}\n"
        f"To install it by hand: {how}\n"
        f"Or point paths.data at a directory that holds it. {OFFLINE_HINT}"
    )


def _download_failed(exc: BaseException) -> str:
    return f"Download failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()


# --- loaders ------------------------------------------------------------------------------------


@register_loader("embedded")
def load_embedded(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """The vendored Fashion-MNIST subset: real data, offline, used by the quickstart and the tests."""
    train, test = _idx_pair(EMBEDDED_DIR, "train"), _idx_pair(EMBEDDED_DIR, "t10k")
    if train is None or test is None:
        raise DataMissingError(f"The embedded subset is missing from {EMBEDDED_DIR}; reinstall the package")
    return train, test


@register_loader("fashion_mnist")
def load_fashion_mnist(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """Fashion-MNIST from root, else Debian's `dataset-fashion-mnist` files, else torchvision's download."""
    for folder in (root, root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST):
        train, test = _idx_pair(folder, "train"), _idx_pair(folder, "t10k")
        if train is not None and test is not None:
            return train, test
    if not download:
        raise _missing("fashion_mnist", root, "train/t10k IDX files", _FMNIST_HOW, "dataset.download=false.")
    try:
        from torchvision.datasets import FashionMNIST

        tr, te = (FashionMNIST(str(root), train=t, download=True) for t in (True, False))
    except Exception as exc:  # any network or archive failure becomes one clear message
        raise _missing("fashion_mnist", root, "train/t10k IDX files", _FMNIST_HOW, _download_failed(exc)) from exc
    return (ImageSet(d.data.unsqueeze(1).clone(), d.targets.long().clone()) for d in (tr, te))  # type: ignore[return-value]


_FMNIST_HOW = "apt-get install dataset-fashion-mnist, or copy the four *-ubyte.gz files into that directory."


def _torchvision_cifar(name: str, cls_name: str, folder: str, url: str) -> Loader:
    def load(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
        import torchvision.datasets as tvd

        how = f"download {url} and extract it into {root} (giving {root / folder}/)."
        cls = getattr(tvd, cls_name)
        try:
            sets = [cls(str(root), train=t, download=False) for t in (True, False)]
        except RuntimeError:
            if not download:
                raise _missing(name, root, f"{folder}/", how, "dataset.download=false.") from None
            try:
                sets = [cls(str(root), train=t, download=True) for t in (True, False)]
            except Exception as exc:
                raise _missing(name, root, f"{folder}/", how, _download_failed(exc)) from exc
        tr, te = (
            ImageSet(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets)) for s in sets
        )
        return tr, te

    return load


register_loader("cifar10")(
    _torchvision_cifar(
        "cifar10", "CIFAR10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    )
)
register_loader("cifar100")(
    _torchvision_cifar(
        "cifar100", "CIFAR100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    )
)


@register_loader("gtsrb")
def load_gtsrb(root: Path, download: bool, size: int = 32) -> tuple[ImageSet, ImageSet]:
    """GTSRB through torchvision, resized once to 32x32 and cached as a tensor file beside the images."""
    cached = root / f"gtsrb_{size}.pt"
    if cached.exists():
        blob = torch.load(cached, weights_only=True)
        return ImageSet(blob["train_x"], blob["train_y"]), ImageSet(blob["test_x"], blob["test_y"])
    import torchvision.datasets as tvd

    how = "let torchvision download it once with internet (dataset.download=true) into that directory."
    try:
        sets = [tvd.GTSRB(str(root), split=s, download=download) for s in ("train", "test")]
    except Exception as exc:
        raise _missing("gtsrb", root, "gtsrb/ (torchvision layout)", how, _download_failed(exc)) from exc
    train, test = (_resize_pil_dataset(s, size) for s in sets)
    from benchmark.io import atomic_torch_save

    atomic_torch_save({"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y}, cached)
    return train, test


def _resize_pil_dataset(dataset: torch.utils.data.Dataset, size: int) -> ImageSet:
    """One-off conversion of a PIL dataset to a uint8 tensor (runs once, then the tensor file is used)."""
    images, labels = [], []
    for img, label in dataset:  # type: ignore[attr-defined]
        arr = np.asarray(img.convert("RGB").resize((size, size)), dtype=np.uint8)
        images.append(torch.from_numpy(arr).permute(2, 0, 1))
        labels.append(int(label))
    return ImageSet(torch.stack(images), torch.tensor(labels))


@register_loader("imagenet12")
def load_imagenet12(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """RNP's ImageNet-12 subset at 224x224: fetched, extracted safely, decoded once (benchmark/imagenet12.py)."""
    from benchmark.imagenet12 import load

    return load(root, download)
