"""Datasets as whole uint8 tensors: train (for backdoor training), reserve (clean, never trained on), test.

The types and the splits only; getting the data (download, archives, the loaders) is `benchmark.sources`.
"""

from benchmark.core.data.images import DataSplits, ImageSet, TriggeredSet, make_splits

__all__ = ["DataSplits", "ImageSet", "TriggeredSet", "make_splits"]
