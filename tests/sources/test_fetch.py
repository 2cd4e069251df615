"""Downloads against a local server: verify, cache, refuse bad hashes, resume, fail fast offline."""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import logging
import os
import socket
import time
from pathlib import Path

import pytest

from benchmark.core.errors import ConfigError, DiskFullError
from benchmark.sources import fetch as fetch_module
from benchmark.sources.fetch import GDRIVE_ENV, ChecksumError, FetchError, Remote, fetch, meta_path
from tests.helpers.fileserver import FileServer

BODY = os.urandom(1_500_000)  # three of gdown's 512 KiB chunks, so a cut transfer leaves bytes to resume
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def server():
    srv = FileServer(files={"w.bin": BODY})
    yield srv
    srv.close()


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_pinned_file_is_fetched_verified_cached_and_not_downloaded_twice(server, tmp_home) -> None:
    dest = tmp_home / "zoo" / "w.bin"
    got = fetch(Remote(url=server.url("w.bin")), dest, SHA, quiet=True)
    assert got.downloaded and got.sha256 == SHA and dest.read_bytes() == BODY
    meta = json.loads(meta_path(dest).read_text())
    assert meta["sha256"] == SHA and meta["pinned"] and meta["size"] == len(BODY)
    again = fetch(Remote(url=server.url("w.bin")), dest, SHA, quiet=True)
    assert not again.downloaded and server.gets("w.bin") == 1
    assert _no_leftovers(dest.parent) == ["w.bin", "w.bin.meta.json"]


def test_unknown_hash_is_recorded_and_printed(server, tmp_home, caplog) -> None:
    dest = tmp_home / "zoo" / "w.bin"
    with caplog.at_level(logging.WARNING, logger="benchmark.sources.fetch"):
        got = fetch(Remote(url=server.url("w.bin")), dest, None, quiet=True)
    assert got.sha256 == SHA
    assert json.loads(meta_path(dest).read_text()) | {"pinned": False, "sha256": SHA} == json.loads(
        meta_path(dest).read_text()
    )
    assert f"sha256 of w.bin is not pinned; it is {SHA}" in caplog.text


def test_wrong_hash_is_deleted_with_a_clear_error_and_nothing_cached(server, tmp_home) -> None:
    dest = tmp_home / "zoo" / "w.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=f"has sha256 {SHA}, but {wrong} is pinned.*nothing was cached"):
        fetch(Remote(url=server.url("w.bin")), dest, wrong, quiet=True)
    assert _no_leftovers(dest.parent) == []


def test_cached_file_that_fails_its_pinned_hash_is_fetched_again(server, tmp_home) -> None:
    dest = tmp_home / "zoo" / "w.bin"
    fetch(Remote(url=server.url("w.bin")), dest, SHA, quiet=True)
    dest.write_bytes(BODY[:1000])  # damaged on disk
    got = fetch(Remote(url=server.url("w.bin")), dest, SHA, quiet=True)
    assert got.downloaded and dest.read_bytes() == BODY and server.gets("w.bin") == 2


def test_interrupted_download_keeps_its_bytes_and_the_next_fetch_resumes(server, tmp_home) -> None:
    dest = tmp_home / "zoo" / "w.bin"
    server.cut["w.bin"] = 800_000
    with pytest.raises(FetchError, match="partial download is kept") as err:
        fetch(Remote(url=server.url("w.bin")), dest, SHA, retries=0, quiet=True)
    assert "save it as" in str(err.value) and str(dest) in str(err.value)
    assert not dest.exists()
    got = fetch(Remote(url=server.url("w.bin")), dest, SHA, retries=0, quiet=True)
    assert got.downloaded and dest.read_bytes() == BODY
    assert server.requests[-1] == ("/w.bin", "bytes=524288-")  # only the missing bytes were asked for
    assert _no_leftovers(dest.parent) == ["w.bin", "w.bin.meta.json"]


def test_interrupted_download_restarts_when_the_server_cannot_resume(server, tmp_home) -> None:
    dest = tmp_home / "zoo" / "w.bin"
    server.cut["w.bin"] = 800_000
    server.no_range.add("w.bin")
    with pytest.raises(FetchError):
        fetch(Remote(url=server.url("w.bin")), dest, SHA, retries=0, quiet=True)
    got = fetch(Remote(url=server.url("w.bin")), dest, SHA, retries=0, quiet=True)
    assert got.downloaded and dest.read_bytes() == BODY
    assert server.requests[-1] == ("/w.bin", None)  # a fresh transfer from byte 0


def test_transfer_dropped_mid_way_is_retried_within_the_same_fetch(server, tmp_home) -> None:
    dest = tmp_home / "zoo" / "w.bin"
    server.cut["w.bin"] = 800_000
    got = fetch(Remote(url=server.url("w.bin")), dest, SHA, retries=1, quiet=True)
    assert got.downloaded and dest.read_bytes() == BODY and server.gets("w.bin") == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_within_seconds_saying_what_to_download_and_where(tmp_home, monkeypatch) -> None:
    monkeypatch.setenv(GDRIVE_ENV, f"http://127.0.0.1:{_closed_port()}/uc?id={{id}}")
    dest = tmp_home / "zoo" / "rnp"
    start = time.perf_counter()
    with pytest.raises(FetchError) as err:
        fetch(Remote(gdrive="FILEID123"), dest, None, quiet=True, what="zoo checkpoint x")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert msg.startswith("Could not download the zoo checkpoint x (") and "ConnectionError" in msg
    assert "https://drive.google.com/uc?id=FILEID123" in msg and f"save it as {dest}" in msg
    assert _no_leftovers(dest.parent) == []


def test_offline_message_names_the_pinned_md5_not_an_unpinned_sha256(tmp_home, monkeypatch) -> None:
    monkeypatch.setenv(GDRIVE_ENV, f"http://127.0.0.1:{_closed_port()}/uc?id={{id}}")
    md5 = hashlib.md5(BODY, usedforsecurity=False).hexdigest()
    with pytest.raises(FetchError) as err:
        fetch(Remote(gdrive="FILEID123"), tmp_home / "data" / "a.tar.gz", None, md5=md5, quiet=True)
    assert f"its md5 must be {md5}; it is checked before use" in str(err.value)
    assert "not pinned" not in str(err.value)


def test_md5_pinned_file_is_not_reported_as_unpinned(server, tmp_home, caplog) -> None:
    md5 = hashlib.md5(BODY, usedforsecurity=False).hexdigest()
    with caplog.at_level(logging.INFO, logger="benchmark.sources.fetch"):
        fetch(Remote(url=server.url("w.bin")), tmp_home / "data" / "w.bin", None, md5=md5, quiet=True)
    assert "not pinned" not in caplog.text and f"w.bin matches its pinned md5; its sha256 is {SHA}" in caplog.text


def test_gdrive_ids_go_through_the_overridable_endpoint_and_404_is_clear(server, tmp_home, monkeypatch) -> None:
    monkeypatch.setenv(GDRIVE_ENV, server.base + "/{id}")
    got = fetch(Remote(gdrive="w.bin"), tmp_home / "a", SHA, quiet=True)
    assert got.downloaded and server.gets("w.bin") == 1
    with pytest.raises(FetchError, match="404"):
        fetch(Remote(gdrive="missing"), tmp_home / "b", None, quiet=True)


def test_bad_sources_and_hashes_are_config_errors(tmp_home) -> None:
    with pytest.raises(ConfigError, match="exactly one of gdrive or url"):
        Remote(gdrive="x", url="http://a")
    with pytest.raises(ConfigError, match="url='ftp://a' is invalid"):
        Remote(url="ftp://a")
    with pytest.raises(ConfigError, match="expected 64 lowercase hex digits"):
        fetch(Remote(url="http://127.0.0.1:9/x"), tmp_home / "x", "ABC")


def test_a_file_in_a_read_only_shared_folder_is_used_without_a_lock(server, tmp_home, monkeypatch) -> None:
    """A lab's dataset folder mounted read-only (answered as such a mount answers the write probe: EROFS)."""
    dest = tmp_home / "lab" / "w.bin"
    fetch(Remote(url=server.url("w.bin")), dest, SHA, quiet=True)
    for lock in dest.parent.glob("*.lock"):
        lock.unlink()
    before = sorted(p.name for p in dest.parent.iterdir())
    monkeypatch.setattr(fetch_module, "write_probe", lambda f: "Read-only file system" if f == dest.parent else None)
    got = fetch(Remote(url=server.url("w.bin")), dest, SHA, quiet=True)
    assert not got.downloaded and got.sha256 == SHA and server.gets("w.bin") == 1
    assert sorted(p.name for p in dest.parent.iterdir()) == before  # no lock taken there
    with pytest.raises(ChecksumError, match="read-only folder"):
        fetch(Remote(url=server.url("w.bin")), dest, "ab" * 32, quiet=True)
    assert dest.read_bytes() == BODY


class _FillsUp:
    """gdown's partial file on a disk that fills after `room` bytes: what does not fit fails with ENOSPC."""

    def __init__(self, f, room: int) -> None:  # type: ignore[no-untyped-def]
        self.f, self.room = f, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.f, name)


def test_a_full_disk_during_a_download_is_one_message_and_the_partial_resumes(server, tmp_home, monkeypatch) -> None:
    """The disk fills mid-transfer (simulated: writes to gdown's partial file fail with ENOSPC past 600 kB)."""
    dest = tmp_home / "zoo" / "w.bin"
    real = open

    def filling(path: str, mode: str = "r", *args: object, **kw: object):  # type: ignore[no-untyped-def]
        f = real(path, mode, *args, **kw)  # type: ignore[call-overload]
        return _FillsUp(f, 600_000) if mode == "ab" else f  # "ab": gdown's partial file

    with monkeypatch.context() as m:  # gdown.download is also the name of the function: the module by its path
        m.setattr(importlib.import_module("gdown.download"), "open", filling, raising=False)
        with pytest.raises(DiskFullError) as err:
            fetch(Remote(url=server.url("w.bin")), dest, SHA, retries=0, quiet=True)
    msg = str(err.value)
    assert msg.startswith(f"No space left on the device holding {dest.parent} while downloading w.bin")
    assert "needs about 878.9 KiB" in msg and "\n" not in msg  # the 900,000 bytes still to come
    assert not dest.exists() and [p.stat().st_size for p in dest.parent.glob("w.bin.download*.part")] == [600_000]
    got = fetch(Remote(url=server.url("w.bin")), dest, SHA, retries=0, quiet=True)  # space freed: it resumes
    assert got.downloaded and dest.read_bytes() == BODY and server.requests[-1] == ("/w.bin", "bytes=600000-")
    assert _no_leftovers(dest.parent) == ["w.bin", "w.bin.meta.json"]
