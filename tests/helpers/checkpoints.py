"""A malicious checkpoint's stand-in, for the tests that check nothing pickled is ever run."""

from __future__ import annotations

from pathlib import Path


class Payload:
    """Unpickling this runs code that creates a file: a stand-in for a malicious checkpoint."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (exec, (f"open({str(self.sentinel)!r}, 'w').close()",))
