"""Datasets: the embedded subset, disjoint splits, IDX files, and the missing-data message."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch

from benchmark.core.data import ImageSet, make_splits
from benchmark.core.errors import ConfigError, DataMissingError
from benchmark.sources import Source, load_dataset
from benchmark.sources.idx import read_idx, write_idx
from benchmark.sources.loaders import DEBIAN_FASHION_MNIST
from tests.conftest import composed_source


def test_embedded_subset_is_real_balanced_fashion_mnist() -> None:
    train, test = load_dataset("embedded", Path("/unused"), False)
    assert train.x.shape == (12000, 1, 28, 28) and train.x.dtype == torch.uint8
    assert test.x.shape == (2000, 1, 28, 28)
    assert train.y.bincount().tolist() == [1200] * 10
    assert 60 < train.x.float().mean() < 90  # Fashion-MNIST's mean pixel is ~73


def test_splits_are_disjoint_and_fixed_by_split_seed() -> None:
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 8, 8).contiguous()
    data = ImageSet(x, torch.arange(100) % 10)
    a = make_splits(data, data, 10, reserve=20, split_seed=3, train_limit=50)
    b = make_splits(data, data, 10, reserve=20, split_seed=3)
    ids = lambda s: set(s.x[:, 0, 0, 0].tolist())  # noqa: E731
    assert len(a.reserve) == 20 and len(a.train) == 50
    assert not ids(a.reserve) & ids(a.train)
    assert ids(a.reserve) == ids(b.reserve) and len(b.train) == 80
    with pytest.raises(ConfigError, match="reserve=100 must be smaller"):
        make_splits(data, data, 10, reserve=100, split_seed=0)


def test_idx_round_trip(tmp_path: Path) -> None:
    arr = torch.randint(0, 256, (5, 3, 4), dtype=torch.uint8)
    write_idx(tmp_path / "a.gz", arr)
    assert torch.equal(read_idx(tmp_path / "a.gz"), arr)


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"Unknown dataset 'cifar11'; choose from .*cifar10"):
        load_dataset("cifar11", Path("/tmp"), False)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "gtsrb"])
def test_missing_dataset_without_download_explains_what_to_do(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as err:
        load_dataset(name, tmp_path, composed_source(name, "dataset.download=false"))
    msg = str(err.value)
    assert name in msg and str(tmp_path / name) in msg and "experiment=quickstart" in msg


def test_archives_come_from_the_composed_config_only(tmp_path: Path) -> None:
    """No conf/dataset/*.yaml read by hand: a source without `dataset.files` names the missing setting."""
    with pytest.raises(ConfigError, match=r"dataset cifar10: dataset\.files has no 'archive' entry"):
        load_dataset("cifar10", tmp_path, Source(download=False))


def test_missing_cifar10_with_download_fails_fast_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    start = time.perf_counter()
    with pytest.raises(DataMissingError) as err:
        load_dataset("cifar10", tmp_path, composed_source("cifar10"))
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "Download failed" in msg and "cifar-10-python.tar.gz" in msg and str(tmp_path / "cifar10") in msg


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_full_fashion_mnist_from_debian_files(tmp_path: Path) -> None:
    train, test = load_dataset("fashion_mnist", tmp_path, download=False)
    assert len(train) == 60000 and len(test) == 10000
