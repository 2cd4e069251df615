"""A Hydra search-path plugin: puts the studies' presets (`studies/conf/`) on every benchmark command's path.

A plugin rather than `hydra.searchpath` in conf/config.yaml: Hydra takes that key only from the primary config
(so `python -m benchmark.export`, whose primary config includes conf/config.yaml, could not compose), and a
command line setting `hydra.searchpath` for a lab's folder would replace the list and drop the studies.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from benchmark import EXTRA_SEARCHPATH


class BenchmarkSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for entry in EXTRA_SEARCHPATH:
            search_path.append(provider="backdoor-benchmark", path=entry)
