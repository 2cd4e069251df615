"""Getting the data: fetching files (HTTP and Google Drive, resumable, hashed), extracting archives safely,
and the dataset loaders with their registry. Beside the methods, which never import it.

`registry` holds the loader per name, `loaders` and `imagenet12` the loaders themselves (imported here so that
every name is registered once the package is imported), `resized` the resized-image file two of them keep
(in the user's own cache when the data folder is read-only), `source` what a loader may fetch (the composed
`dataset` config: files, mirror, download, size).
"""

from benchmark.sources import imagenet12, loaders  # noqa: F401  (registration)
from benchmark.sources.registry import OFFLINE_HINT, load_dataset, loader_names, register_loader
from benchmark.sources.source import Source

__all__ = ["OFFLINE_HINT", "Source", "load_dataset", "loader_names", "register_loader"]
