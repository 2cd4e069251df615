"""Downloads into a cache: Google Drive ids (through gdown) or any http(s) URL, verified by sha256.

A file is fetched to a temporary name, hashed while it streams, checked against its expected sha256
(when one is pinned) and only then renamed to its final name, so the cache never holds a torn or
unverified file. An interrupted transfer keeps its partial bytes and the next fetch resumes them
(or restarts when the server cannot resume). Without a network the fetch fails within seconds with a
message saying what to download and where to put it by hand.

Three limits bound a transfer: `timeout_s` each wait for the server, `deadline_s` the whole download
(retries included), and `min_rate_kb_s` its speed: a server that sends too slowly (a byte every few
seconds never trips a read timeout) is cut off once the last `rate_window(min_rate)` seconds brought
less than half the minimum rate's bytes. A file cached from another source than the one now asked
for (the zoo entry's URL or id changed) is fetched again.

`BENCHMARK_GDRIVE_URL` (a template with `{id}`) replaces the Google Drive endpoint: tests point it at
a server on 127.0.0.1, and a lab can point it at a mirror.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from benchmark.core.errors import BenchmarkError, ConfigError, DataMissingError, DiskFullError
from benchmark.core.io import atomic_write_json, disk_full, honour_umask, write_probe

log = logging.getLogger(__name__)

GDRIVE_ENV = "BENCHMARK_GDRIVE_URL"
GDRIVE_URL = "https://drive.google.com/uc?id={id}"
CHUNK = 1 << 20
GDOWN_BLOCK = 512 * 1024  # gdown reports progress once per block of this size
DEADLINE_S = 1800.0  # defaults of fetch(); the zoo passes model.deadline_s / model.min_rate_kb_s
MIN_RATE_KB_S = 10.0


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
    return _digest(path, hashlib.sha256())


def md5_file(path: Path) -> str:
    """The md5 some publishers (torchvision's dataset sources) pin instead of a sha256."""
    return _digest(path, hashlib.md5(usedforsecurity=False))


def _digest(path: Path, h: Any) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(md5: str | None, owner: str = "") -> None:
    """A pinned md5 must be 32 lowercase hex digits (null: not pinned)."""
    if md5 is not None and (len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5)):
        raise ConfigError(f"{owner}md5={md5!r} is invalid: expected 32 lowercase hex digits, or null")


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(meta_path(path).read_text())
    except (OSError, ValueError):
        return {}


def _record(path: Path, remote: Remote, digest: str, pinned: str | None, md5: str | None = None) -> None:
    """Write the cache metadata; an unpinned sha256 is printed so the user can pin it in the zoo."""
    atomic_write_json(
        meta_path(path),
        {
            "source": remote.public(),
            "sha256": digest,
            **({"md5": md5} if md5 else {}),
            "pinned": pinned is not None,
            "size": path.stat().st_size,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    if pinned is None and md5 is None:
        log.warning("sha256 of %s is not pinned; it is %s (recorded in %s)", path.name, digest, meta_path(path))
    elif pinned is None:
        log.info("%s matches its pinned md5; its sha256 is %s (recorded in %s)", path.name, digest, meta_path(path))


def _partials(tmp: Path) -> list[Path]:
    """gdown's partial files for `tmp`: `<tmp name><8 random chars>.part` in the same directory."""
    return [p for p in tmp.parent.glob(tmp.name + "*.part") if len(p.name) == len(tmp.name) + 8 + len(".part")]


def _by_hand(remote: Remote, dest: Path, sha256: str | None, md5: str | None = None) -> str:
    """How to install the file by hand, naming the digest it will be checked against (sha256, else md5)."""
    if sha256:
        pin = f"its sha256 must be {sha256}"
    elif md5:
        pin = f"its md5 must be {md5}; it is checked before use"
    else:
        pin = "no digest is pinned for it: its sha256 is recorded on first use"
    return f"To install it by hand: download {remote.public()}\nand save it as {dest} ({pin})."


def rate_window(min_rate_kb_s: float) -> float:
    """Seconds over which the rate is judged: long enough for two of gdown's progress blocks at the minimum rate."""
    return 2 * GDOWN_BLOCK / (min_rate_kb_s * 1000)


@dataclass(frozen=True)
class Limits:
    """How long a download may take in all (seconds) and how slowly it may run (kB/s, 1 kB = 1000 bytes)."""

    timeout_s: float = 10.0
    deadline_s: float = DEADLINE_S
    min_rate_kb_s: float = MIN_RATE_KB_S


class _Watchdog:
    """Cancels a gdown transfer (through its cancel event) past the deadline or below the minimum rate.

    Bytes are seen in gdown's 512 KiB blocks, so the rate is judged on a window of two blocks' time at the
    minimum rate: a transfer at or above the minimum is never cut off; one bringing less than half of it is.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.cancel = threading.Event()
        self.reason: str | None = None
        self.received = 0
        self.total: int | None = None  # the file's size, once the server has announced it
        self._start = time.monotonic()
        self._seen: list[tuple[float, int]] = [(self._start, 0)]  # (time, bytes so far) at each progress call
        self._done = threading.Event()

    def progress(self, so_far: int, total: int | None) -> None:
        self.received, self.total = so_far, total
        self._seen.append((time.monotonic(), so_far))

    def _check(self) -> str | None:
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed > self.limits.deadline_s:
            return f"it did not finish within the deadline of {self.limits.deadline_s:g} s"
        window = rate_window(self.limits.min_rate_kb_s)
        if elapsed < window:
            return None
        before = max((n for t, n in self._seen if t <= now - window), default=0)
        brought = self.received - before
        if brought < self.limits.min_rate_kb_s * 1000 * window / 2:
            return (
                f"it ran below the minimum rate of {self.limits.min_rate_kb_s:g} kB/s "
                f"({brought} bytes in the last {window:.0f} s)"
            )
        return None

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            reason = self._check()
            if reason is not None:
                self.reason = reason
                self.cancel.set()
                return

    @contextmanager
    def running(self) -> Iterator[_Watchdog]:
        thread = threading.Thread(target=self._watch, name="download-watchdog", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._done.set()
            thread.join()


def _gdown(url: str, out: Path, timeout_s: float, retries: int, quiet: bool, watch: _Watchdog) -> str:
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
        progress=watch.progress,
        cancel=watch.cancel,
        # gdown fixes its cookie path at import time; ask for it now so HOME set by a caller applies.
        cookies_file=str(Path.home() / ".cache" / "gdown" / "cookies.txt"),
    )
    return hasher.hexdigest()


def _download(remote: Remote, tmp: Path, limits: Limits, retries: int, quiet: bool) -> str:
    """Download to `tmp`; a partial file the server will not resume is dropped and the transfer restarts."""
    url = remote.resolve()
    _drop_partials_of_other_source(tmp, remote)
    if tmp.exists():  # complete (gdown renames only finished transfers) but killed before verification
        return sha256_file(tmp)
    if _partials(tmp):
        log.info("resuming the interrupted download of %s", tmp.name)
    atomic_write_json(meta_path(tmp), {"source": remote.public()})  # whose bytes a partial file holds
    try:
        return _watched_download(url, tmp, limits, retries, quiet)
    finally:
        if not tmp.exists() and not _partials(tmp):
            meta_path(tmp).unlink(missing_ok=True)


def _watched_download(url: str, tmp: Path, limits: Limits, retries: int, quiet: bool) -> str:
    """gdown's transfer under the watchdog; a stop for the deadline or the rate becomes a FetchError, a full
    disk or quota a DiskFullError (a network failure would tell the user to download by hand, which fails too)."""
    from gdown.exceptions import DownloadCancelled, DownloadError

    with _Watchdog(limits).running() as watch:
        try:
            try:
                return _gdown(url, tmp, limits.timeout_s, retries, quiet, watch)
            except DownloadError as exc:
                if "byte range" not in str(exc) and "multiple temporary files" not in str(exc):
                    raise
                log.warning("cannot resume %s (%s): restarting the download", tmp.name, str(exc).splitlines()[0])
                for part in _partials(tmp):
                    part.unlink()
                return _gdown(url, tmp, limits.timeout_s, retries, quiet, watch)
        except DownloadCancelled:
            if watch.reason is None:
                raise
            kept = " The partial download is kept and the next attempt resumes it." if watch.received else ""
            raise FetchError(
                f"Stopped downloading {url}: {watch.reason}; {watch.received} bytes had arrived (counted in whole "
                f"512 KiB blocks).{kept} The zoo's limits are model.deadline_s and model.min_rate_kb_s."
            ) from None
        except OSError as exc:
            if not disk_full(exc):
                raise
            raise _full_disk(tmp, watch.total) from None


def _full_disk(tmp: Path, total: int | None) -> DiskFullError:
    """The error for a disk that filled under download `tmp`: its partial bytes stay for the rerun to resume
    (an empty partial file is dropped), so the space needed is what is still to come, when the size is known."""
    kept = 0
    for part in _partials(tmp):
        size = part.stat().st_size
        if not size:
            part.unlink()
        kept += size
    note = f" ({kept} bytes that arrived are kept; the rerun resumes from there)" if kept else ""
    name = tmp.name.removesuffix(".download")
    return DiskFullError(tmp.parent, None if total is None else max(total - kept, 0), f"downloading {name}{note}")


def _drop_partials_of_other_source(tmp: Path, remote: Remote) -> None:
    """Partial bytes fetched from another source must not be resumed into this one's file."""
    recorded, now = _read_meta(tmp).get("source"), remote.public()
    if recorded is not None and recorded != now:
        log.warning("dropping a partial download of %s from %s: the source is now %s", tmp.name, recorded, now)
        tmp.unlink(missing_ok=True)
        for part in _partials(tmp):
            part.unlink()


def _read_only_cached(dest: Path, sha256: str | None, md5: str | None, what: str) -> Fetched:
    """A file in a read-only folder: used without a lock (nothing is written) when it has its pinned hashes."""
    digest = sha256_file(dest)
    if (sha256 is not None and digest != sha256) or (md5 is not None and md5_file(dest) != md5):
        raise ChecksumError(
            f"{what}: {dest} (in a read-only folder) does not have its pinned sha256/md5 and cannot be replaced "
            "there; ask who maintains that folder, or point the setting naming it at a writable folder"
        )
    if sha256 is None and md5 is None:
        log.warning("%s: %s is in a read-only folder and not pinned: used as it is (sha256 %s)", what, dest, digest)
    log.info("%s: using %s from a read-only folder (no lock needed to read)", what, dest)
    return Fetched(dest, digest, downloaded=False)


def _verify_cached(dest: Path, remote: Remote, sha256: str | None, md5: str | None) -> Fetched | None:
    """The cached file if it is intact; a file that fails a pinned hash is deleted (then re-fetched)."""
    if not dest.exists():
        return None
    fetched_from = _read_meta(dest).get("source")
    if sha256 is None and md5 is None and fetched_from is not None and fetched_from != remote.public():
        log.warning(
            "cached %s was fetched from %s, but the source is now %s: fetching it again", dest, fetched_from,
            remote.public(),
        )  # fmt: skip
        dest.unlink()
        meta_path(dest).unlink(missing_ok=True)
        return None
    digest = sha256_file(dest)
    meta = _read_meta(dest)  # its md5 was taken from these very bytes when their sha256 still matches
    known_md5 = meta.get("md5") if meta.get("sha256") == digest else None
    bad_md5 = md5 is not None and (known_md5 or md5_file(dest)) != md5
    if (sha256 is not None and digest != sha256) or bad_md5:
        log.warning("cached %s does not have its pinned sha256/md5: deleting it and fetching again", dest)
        dest.unlink()
        meta_path(dest).unlink(missing_ok=True)
        return None
    recorded = _read_meta(dest).get("sha256")
    if recorded != digest:
        if recorded is not None:
            log.warning("cached %s changed since it was fetched (sha256 %s, recorded %s)", dest, digest, recorded)
        _record(dest, remote, digest, sha256, md5)
    return Fetched(dest, digest, downloaded=False)


def _check_pinned(tmp: Path, algo: str, got: str, pinned: str | None, what: str, remote: Remote) -> None:
    """A download whose hash differs from the pinned one is deleted, with nothing cached, and refused."""
    if pinned is None or got == pinned:
        return
    tmp.unlink(missing_ok=True)
    meta_path(tmp).unlink(missing_ok=True)
    raise ChecksumError(
        f"The {what} downloaded from {remote.public()} has {algo} {got}, but {pinned} is pinned: it is not the "
        f"published file (changed upstream, a wrong mirror, or corrupted in transit). It was deleted; "
        f"nothing was cached."
    )


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
    deadline_s: float = DEADLINE_S,
    min_rate_kb_s: float = MIN_RATE_KB_S,
    retries: int = 2,
    quiet: bool = False,
    what: str = "file",
    md5: str | None = None,
) -> Fetched:
    """`dest`, downloaded from `remote` unless it is already cached, verified against `sha256` if pinned.

    Concurrent callers share one download (file lock). A pinned hash that does not match: the file is
    deleted, nothing is cached and `ChecksumError` says so (likewise a pinned `md5`, for sources that publish
    only an md5). Network trouble, or a transfer past `deadline_s` or below `min_rate_kb_s`: `FetchError` with
    how to put the file in place by hand; partial bytes stay for the next attempt to resume (likewise on a full
    disk or quota, which is a `DiskFullError` instead). An unpinned file cached from another source is fetched again.
    """
    check_sha256(sha256)
    check_md5(md5)
    dest = Path(dest).expanduser()
    if dest.is_file() and write_probe(dest.parent) is not None:  # a shared folder mounted read-only
        return _read_only_cached(dest, sha256, md5, what)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        cached = _verify_cached(dest, remote, sha256, md5)
        if cached is not None:
            log.info("%s: using cached %s", what, dest)
            return cached
        tmp = dest.with_name(dest.name + ".download")
        log.info("%s: downloading %s -> %s", what, remote.resolve(), dest)
        try:
            digest = _download(remote, tmp, Limits(timeout_s, deadline_s, min_rate_kb_s), retries, quiet)
        except FetchError as exc:
            raise FetchError(f"{exc}\n{_by_hand(remote, dest, sha256, md5)}") from None
        except BenchmarkError:
            raise
        except Exception as exc:  # gdown and requests raise many kinds; all mean "not downloaded"
            reason = _reason(exc)
            kept = " The partial download is kept and the next attempt resumes it." if _partials(tmp) else ""
            raise FetchError(
                f"Could not download the {what} ({reason}).{kept}\n{_by_hand(remote, dest, sha256, md5)}"
            ) from exc
        _check_pinned(tmp, "sha256", digest, sha256, what, remote)
        if md5 is not None:
            _check_pinned(tmp, "md5", md5_file(tmp), md5, what, remote)
        honour_umask(tmp)  # gdown's temp file is 0600; a shared zoo folder needs the group's usual mode
        os.replace(tmp, dest)
        meta_path(tmp).unlink(missing_ok=True)
        _record(dest, remote, digest, sha256, md5)
        return Fetched(dest, digest, downloaded=True)
