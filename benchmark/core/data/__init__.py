"""Datasets as whole uint8 tensors: train (for backdoor training), reserve (clean, never trained on), test.

`images` holds the types, `registry` the loader per name, `loaders` and `imagenet12` the loaders
themselves (imported here so that every name is registered once the package is imported).
"""

from benchmark.core.data import imagenet12, loaders  # noqa: F401  (registration)
from benchmark.core.data.images import DataSplits, ImageSet, TriggeredSet, make_splits
from benchmark.core.data.registry import OFFLINE_HINT, load_dataset, loader_names, register_loader

__all__ = [
    "OFFLINE_HINT",
    "DataSplits",
    "ImageSet",
    "TriggeredSet",
    "load_dataset",
    "loader_names",
    "make_splits",
    "register_loader",
]
