"""Where a dataset's archives come from: the real URLs (or a lab's mirror), their pinned hashes, the image size.

Each downloading dataset names its archives in `conf/dataset/<name>.yaml` under `files`, one entry per role
(`archive`; GTSRB: `train`, `test_images`, `test_gt`) with `url` (or `gdrive`, a Google Drive id), `md5`
(what the publisher or torchvision pins) and `sha256` (null: recorded on first fetch). A top-level `mirror`
replaces everything before the file name of every URL, so a lab mirror needs one setting. A loader gets all
this as Hydra composed it (a `Source` built from the run config's `dataset`); nothing here reads the YAML.
Archives are fetched through `benchmark.sources.fetch` (resumable, verified, atomic) and extracted through
`benchmark.sources.archives` (checked, atomic); a damaged archive is deleted with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.core.errors import ConfigError, DataMissingError
from benchmark.sources.archives import DamagedArchiveError, extract_many
from benchmark.sources.fetch import Fetched, FetchError, Remote, check_md5, check_sha256, fetch, meta_path

OFFLINE_HINT = "For an offline run on embedded data use: python -m benchmark experiment=quickstart"


@dataclass(frozen=True)
class FileSpec:
    """One published archive: its URL (or Drive id) and the hashes it must have."""

    url: str | None = None
    gdrive: str | None = None
    md5: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        check_md5(self.md5, "dataset.files: ")
        check_sha256(self.sha256, "dataset.files: ")
        self.remote()  # exactly one of url / gdrive, and an http(s) URL

    def remote(self, mirror: str | None = None) -> Remote:
        """The remote to fetch: the URL with its prefix replaced by `mirror` when one is set."""
        if self.url is not None and mirror:
            return Remote(url=mirror.rstrip("/") + "/" + self.name)
        return Remote(gdrive=self.gdrive, url=self.url)

    @property
    def name(self) -> str:
        """The file name the archive is saved under (the URL's last part; the Drive id's stand-in name)."""
        if self.url is not None:
            return self.url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        return f"gdrive-{self.gdrive}"


@dataclass(frozen=True)
class Source:
    """What a loader may do to obtain its data: download or not, from which files, at which image size."""

    download: bool = True
    files: dict[str, FileSpec] = field(default_factory=dict)
    mirror: str | None = None
    size: int | None = None  # the square side images are resized to (datasets stored at other sizes)
    timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if self.mirror is not None and not self.mirror.startswith(("http://", "https://")):
            raise ConfigError(f"mirror={self.mirror!r} is invalid: expected an http:// or https:// URL, or null")

    def file(self, dataset: str, role: str) -> FileSpec:
        """The spec of archive `role`, as the composed `dataset.files` gives it."""
        spec = self.files.get(role)
        if spec is None:
            raise ConfigError(f"dataset {dataset}: dataset.files has no {role!r} entry (url/gdrive, md5, sha256)")
        return spec


def file_specs(files: dict[str, Any] | None) -> dict[str, FileSpec]:
    """`dataset.files` from the config as specs (unknown keys name the allowed ones)."""
    out = {}
    for role, spec in (files or {}).items():
        try:
            out[role] = FileSpec(**(spec or {}))
        except TypeError:
            raise ConfigError(
                f"dataset.files.{role}={spec!r} is invalid: allowed keys are url, gdrive, md5, sha256"
            ) from None
    return out


def fetch_archive(source: Source, dataset: str, role: str, root: Path) -> Fetched:
    """Archive `role` of `dataset` in `root` (downloaded when allowed), verified against its pinned hashes."""
    spec = source.file(dataset, role)
    remote = spec.remote(source.mirror)
    dest = root / spec.name
    if not source.download and not dest.exists():
        raise DataMissingError(
            f"Dataset {dataset!r} not found in {root} (expected {spec.name}) and dataset.download=false.\n"
            f"{by_hand(remote, dest, spec)}\n{OFFLINE_HINT}"
        )
    try:
        return fetch(
            remote, dest, spec.sha256, md5=spec.md5, timeout_s=source.timeout_s, what=f"{dataset} archive {spec.name}"
        )
    except FetchError as exc:
        raise DataMissingError(f"Dataset {dataset!r}: Download failed. {exc}\n{OFFLINE_HINT}") from exc


def by_hand(remote: Remote, dest: Path, spec: FileSpec) -> str:
    pins = ", ".join(f"{k} {v}" for k, v in (("md5", spec.md5), ("sha256", spec.sha256)) if v) or "no hash pinned"
    return f"To install it by hand: download {remote.public()} and save it as {dest} ({pins})."


def extract_fetched(archives: list[Fetched], target: Path, dataset: str) -> Path:
    """Extract verified archives into `target` at once; a damaged one is deleted (the next run refetches it)."""
    try:
        return extract_many([a.path for a in archives], target)
    except DamagedArchiveError as exc:
        exc.archive.unlink(missing_ok=True)
        meta_path(exc.archive).unlink(missing_ok=True)
        raise DataMissingError(
            f"Dataset {dataset!r}: {exc}. It is truncated or was corrupted in transit, and no md5/sha256 pinned in "
            f"dataset.files caught it before extraction. It was deleted: run again to download it afresh."
        ) from None
