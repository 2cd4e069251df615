"""IDX files (the MNIST family's format): read for Fashion-MNIST, written to vendor the embedded subset."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmark.core.data.images import ImageSet


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


def idx_pair(folder: Path, prefix: str) -> ImageSet | None:
    images = next(iter(sorted(folder.glob(f"{prefix}-images-idx3-ubyte*"))), None)
    labels = next(iter(sorted(folder.glob(f"{prefix}-labels-idx1-ubyte*"))), None)
    if images is None or labels is None:
        return None
    return ImageSet(read_idx(images).unsqueeze(1), read_idx(labels).long())
