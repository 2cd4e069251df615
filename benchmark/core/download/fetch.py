"""Downloads into a cache: Google Drive ids (through gdown) or any http(s) URL, verified by sha256.

A file is fetched to a temporary name, hashed while it streams, checked against its expected sha256
(when one is pinned) and only then renamed to its final name, so the cache never holds a torn or
unverified file. An interrupted transfer keeps its partial bytes and the next fetch resumes them
(or restarts when the server cannot resume). Without a network the fetch fails within seconds with a
message saying what to download and where to put it by hand.

`BENCHMARK_GDRIVE_URL` (a template with `{id}`) replaces the Google Drive endpoint: tests point it at
a server on 127.0.0.1, and a lab can point it at a mirror.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from benchmark.core.errors import BenchmarkError, ConfigError, DataMissingError
from benchmark.core.io import atomic_write_json, honour_umask

log = logging.getLogger(__name__)

GDRIVE_ENV = "BENCHMARK_GDRIVE_URL"
GDRIVE_URL = "https://drive.google.com/uc?id={id}"
CHUNK = 1 << 20


class FetchError(DataMissingError):
    """A file could not be downloaded (offline, server error, interrupted): the user can fetch it by hand."""


class ChecksumError(BenchmarkError):
    """A downloaded or cached file does not have the sha256 it is pinned to: it is not the published file."""


@dataclass(frozen=True)
class Remote:
    """Where a file comes from: a Google Drive id or a plain http(s) URL (exactly one)."""

    gdrive: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.gdrive is None) == (self.url is None):
            raise ConfigError(f"a download source needs exactly one of gdrive or url, got {self}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url={self.url!r} is invalid: expected an http:// or https:// URL")

    def resolve(self) -> str:
        """The URL actually requested (the Drive endpoint can be redirected with BENCHMARK_GDRIVE_URL)."""
        if self.gdrive is not None:
            return os.environ.get(GDRIVE_ENV, GDRIVE_URL).format(id=self.gdrive)
        assert self.url is not None
        return self.url

    def public(self) -> str:
        """The address to give a user downloading by hand (the real Drive page, not a test override)."""
        if self.gdrive is not None:
            return f"https://drive.google.com/uc?id={self.gdrive} (Google Drive file id {self.gdrive})"
        assert self.url is not None
        return self.url


@dataclass(frozen=True)
class Fetched:
    """A verified file in the cache, its sha256, and whether this call downloaded it."""

    path: Path
    sha256: str
    downloaded: bool


def check_sha256(sha256: str | None, owner: str = "") -> None:
    """A pinned hash must be 64 lowercase hex digits (null: not pinned)."""
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
        raise ConfigError(f"{owner}sha256={sha256!r} is invalid: expected 64 lowercase hex digits, or null")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(meta_path(path).read_text())
    except (OSError, ValueError):
        return {}


def _record(path: Path, remote: Remote, digest: str, pinned: str | None) -> None:
    """Write the cache metadata; an unpinned sha256 is printed so the user can pin it in the zoo."""
    atomic_write_json(
        meta_path(path),
        {
            "source": remote.public(),
            "sha256": digest,
            "pinned": pinned is not None,
            "size": path.stat().st_size,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    if pinned is None:
        log.warning("sha256 of %s is not pinned; it is %s (recorded in %s)", path.name, digest, meta_path(path))


def _partials(tmp: Path) -> list[Path]:
    """gdown's partial files for `tmp`: `<tmp name><8 random chars>.part` in the same directory."""
    return [p for p in tmp.parent.glob(tmp.name + "*.part") if len(p.name) == len(tmp.name) + 8 + len(".part")]


def _by_hand(remote: Remote, dest: Path, sha256: str | None) -> str:
    pin = f"its sha256 must be {sha256}" if sha256 else "its sha256 is not pinned: it is recorded on first use"
    return f"To install it by hand: download {remote.public()}\nand save it as {dest} ({pin})."


def _gdown(url: str, out: Path, timeout_s: float, retries: int, quiet: bool) -> str:
    """One gdown transfer into `out`, resuming a partial file when there is one; returns the sha256."""
    import gdown

    hasher = hashlib.sha256()
    gdown.download(
        url=url,
        output=str(out),
        quiet=quiet,
        resume=True,
        hasher=hasher,
        timeout=(min(timeout_s, 10.0), timeout_s),
        retries=retries,
        # gdown fixes its cookie path at import time; ask for it now so HOME set by a caller applies.
        cookies_file=str(Path.home() / ".cache" / "gdown" / "cookies.txt"),
    )
    return hasher.hexdigest()


def _download(remote: Remote, tmp: Path, timeout_s: float, retries: int, quiet: bool) -> str:
    """Download to `tmp`; a partial file the server will not resume is dropped and the transfer restarts."""
    from gdown.exceptions import DownloadError

    url = remote.resolve()
    if tmp.exists():  # complete (gdown renames only finished transfers) but killed before verification
        return sha256_file(tmp)
    if _partials(tmp):
        log.info("resuming the interrupted download of %s", tmp.name)
    try:
        return _gdown(url, tmp, timeout_s, retries, quiet)
    except DownloadError as exc:
        if "byte range" not in str(exc) and "multiple temporary files" not in str(exc):
            raise
        log.warning("cannot resume %s (%s): restarting the download", tmp.name, str(exc).splitlines()[0])
        for part in _partials(tmp):
            part.unlink()
        return _gdown(url, tmp, timeout_s, retries, quiet)


def _verify_cached(dest: Path, remote: Remote, sha256: str | None) -> Fetched | None:
    """The cached file if it is intact; a file that fails its pinned hash is deleted (then re-fetched)."""
    if not dest.exists():
        return None
    digest = sha256_file(dest)
    if sha256 is not None and digest != sha256:
        log.warning("cached %s has sha256 %s, expected %s: deleting it and fetching again", dest, digest, sha256)
        dest.unlink()
        meta_path(dest).unlink(missing_ok=True)
        return None
    recorded = _read_meta(dest).get("sha256")
    if recorded != digest:
        if recorded is not None:
            log.warning("cached %s changed since it was fetched (sha256 %s, recorded %s)", dest, digest, recorded)
        _record(dest, remote, digest, sha256)
    return Fetched(dest, digest, downloaded=False)


def _reason(exc: BaseException) -> str:
    """One short line for a network failure: the innermost cause requests reports, without the URL noise."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    inner = re.search(r"Caused by (\w+)\((['\"]?)(.*)\2\)\)?$", text)
    if inner:
        name, detail = inner[1], inner[3]
        detail = detail.split("): ", 1)[-1] if detail.startswith(("HTTPConnection", "HTTPSConnection")) else detail
        return f"{name}: {detail}".rstrip(".")
    return f"{type(exc).__name__}: {text}".rstrip(".: ")


def fetch(
    remote: Remote,
    dest: Path,
    sha256: str | None = None,
    *,
    timeout_s: float = 10.0,
    retries: int = 2,
    quiet: bool = False,
    what: str = "file",
) -> Fetched:
    """`dest`, downloaded from `remote` unless it is already cached, verified against `sha256` if pinned.

    Concurrent callers share one download (file lock). A pinned hash that does not match: the file is
    deleted, nothing is cached and `ChecksumError` says so. Network trouble: `FetchError` with how to
    put the file in place by hand; partial bytes stay for the next attempt to resume.
    """
    check_sha256(sha256)
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        cached = _verify_cached(dest, remote, sha256)
        if cached is not None:
            log.info("%s: using cached %s", what, dest)
            return cached
        tmp = dest.with_name(dest.name + ".download")
        log.info("%s: downloading %s -> %s", what, remote.resolve(), dest)
        try:
            digest = _download(remote, tmp, timeout_s, retries, quiet)
        except BenchmarkError:
            raise
        except Exception as exc:  # gdown and requests raise many kinds; all mean "not downloaded"
            reason = _reason(exc)
            kept = " The partial download is kept and the next attempt resumes it." if _partials(tmp) else ""
            raise FetchError(
                f"Could not download the {what} ({reason}).{kept}\n{_by_hand(remote, dest, sha256)}"
            ) from exc
        if sha256 is not None and digest != sha256:
            tmp.unlink(missing_ok=True)
            raise ChecksumError(
                f"The {what} downloaded from {remote.public()} has sha256 {digest}, but {sha256} is pinned: "
                f"it is not the published file (changed upstream, or corrupted in transit). It was deleted; "
                f"nothing was cached."
            )
        honour_umask(tmp)  # gdown's temp file is 0600; a shared zoo folder needs the group's usual mode
        os.replace(tmp, dest)
        _record(dest, remote, digest, sha256)
        return Fetched(dest, digest, downloaded=True)
