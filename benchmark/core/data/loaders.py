"""The dataset loaders: the embedded subset, Fashion-MNIST, CIFAR-10/100 and GTSRB (ImageNet-12: imagenet12.py).

Each is registered by name and returns `(train, test)` as uint8 `ImageSet`s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmark.core.data.idx import idx_pair
from benchmark.core.data.images import ImageSet
from benchmark.core.data.registry import Loader, download_failed, missing, register_loader
from benchmark.core.errors import DataMissingError
from benchmark.core.io import atomic_torch_save

EMBEDDED_DIR = Path(__file__).parent / "fashion_mnist_subset"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@register_loader("embedded")
def load_embedded(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """The vendored Fashion-MNIST subset: real data, offline, used by the quickstart and the tests."""
    train, test = idx_pair(EMBEDDED_DIR, "train"), idx_pair(EMBEDDED_DIR, "t10k")
    if train is None or test is None:
        raise DataMissingError(f"The embedded subset is missing from {EMBEDDED_DIR}; reinstall the package")
    return train, test


@register_loader("fashion_mnist")
def load_fashion_mnist(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """Fashion-MNIST from root, else Debian's `dataset-fashion-mnist` files, else torchvision's download."""
    for folder in (root, root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST):
        train, test = idx_pair(folder, "train"), idx_pair(folder, "t10k")
        if train is not None and test is not None:
            return train, test
    if not download:
        raise missing("fashion_mnist", root, "train/t10k IDX files", _FMNIST_HOW, "dataset.download=false.")
    try:
        from torchvision.datasets import FashionMNIST

        tr, te = (FashionMNIST(str(root), train=t, download=True) for t in (True, False))
    except Exception as exc:  # any network or archive failure becomes one clear message
        raise missing("fashion_mnist", root, "train/t10k IDX files", _FMNIST_HOW, download_failed(exc)) from exc
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
                raise missing(name, root, f"{folder}/", how, "dataset.download=false.") from None
            try:
                sets = [cls(str(root), train=t, download=True) for t in (True, False)]
            except Exception as exc:
                raise missing(name, root, f"{folder}/", how, download_failed(exc)) from exc
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
        raise missing("gtsrb", root, "gtsrb/ (torchvision layout)", how, download_failed(exc)) from exc
    train, test = (_resize_pil_dataset(s, size) for s in sets)
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
