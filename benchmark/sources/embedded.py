"""Rebuild the vendored Fashion-MNIST subset (class-balanced) from a full copy of Fashion-MNIST.

    python -m benchmark.sources.embedded /usr/share/datasets/fashion-mnist

The subset is real data small enough to ship (< 8 MB) so that the quickstart and the tests run offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmark.core.data.images import ImageSet
from benchmark.sources.idx import idx_pair, write_idx
from benchmark.sources.loaders import EMBEDDED_DIR

TRAIN_PER_CLASS = 1200
TEST_PER_CLASS = 200


def balanced_subset(data: ImageSet, per_class: int, seed: int) -> ImageSet:
    """`per_class` images of every class, drawn at random with a fixed seed, in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in data.y.unique():
        idx = (data.y == c).nonzero().squeeze(1)
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    index = torch.cat(picks)
    return data.subset(index[torch.randperm(len(index), generator=gen)])


def build(source: Path, dest: Path = EMBEDDED_DIR, seed: int = 0) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        full = idx_pair(source, prefix)
        if full is None:
            raise SystemExit(f"no {prefix} IDX files in {source}")
        sub = balanced_subset(full, per_class, seed)
        write_idx(dest / f"{prefix}-images-idx3-ubyte.gz", sub.x.squeeze(1))
        write_idx(dest / f"{prefix}-labels-idx1-ubyte.gz", sub.y.to(torch.uint8))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the four Fashion-MNIST *-ubyte.gz files")
    build(parser.parse_args().source)
