"""Loading foreign checkpoints safely (nothing executed, strict keys) and extracting archives safely."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from benchmark.core.archs import build_arch
from benchmark.core.errors import DiskFullError
from benchmark.core.io import current_umask
from benchmark.sources import archives
from benchmark.sources.archives import ArchiveTooLargeError, UnsafeArchiveError, extract, sniff
from benchmark.weights.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    encode_safetensors,
    load_strict,
    map_keys,
    pick_member,
    read_checkpoint,
    state_dict_of,
)
from benchmark.weights.zoo import ZooEntry, locate
from tests.helpers.checkpoints import Payload


def small_resnet() -> torch.nn.Module:
    return build_arch("resnet18", 10, width=8)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip-format", "legacy-format"])
def test_checkpoint_carrying_code_is_refused_and_nothing_runs(tmp_path: Path, legacy: bool) -> None:
    sentinel = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(tmp_path / "proof")))  # the payload is live: unpickling creates a file
    assert (tmp_path / "proof").exists()
    path = tmp_path / "evil.pt"
    blob = {"state_dict": small_resnet().state_dict(), "extra": Payload(sentinel)}
    torch.save(blob, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert not sentinel.exists()
    msg = str(err.value)
    assert msg.startswith(f"Refused to load {path}: it holds pickled Python objects")
    assert "(unsupported global exec)" in msg and "could run arbitrary code" in msg


def test_truncated_and_junk_files_are_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save(small_resnet().state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt is not a readable PyTorch checkpoint \(truncated or corrupted"):
        read_checkpoint(cut)
    page = tmp_path / "page"
    page.write_text("<!DOCTYPE html><html>Google Drive - quota exceeded</html>")
    with pytest.raises(CheckpointError, match="is an HTML page, not a checkpoint"):
        read_checkpoint(page)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as err:
        read_checkpoint(junk)
    assert not isinstance(err.value, UnsafeCheckpointError)


def test_safetensors_files_are_read_by_suffix_or_by_header(tmp_path: Path) -> None:
    """Ours (tagged) read back as the {"state_dict", "trigger"} dict; anyone else's as the flat state dict it is."""
    src = small_resnet()
    ours = tmp_path / "ours.safetensors"
    ours.write_bytes(encode_safetensors({"state_dict": src.state_dict(), "trigger": {"mask": torch.ones(2)}}))
    theirs = tmp_path / "gdrive-1AbC"  # a Drive download is cached under its id: told by its header
    theirs.write_bytes(safetensors.torch.save({f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}))
    assert sniff(ours) == sniff(theirs) == "safetensors"
    blob = read_checkpoint(ours)
    assert sorted(blob) == ["state_dict", "trigger"] and torch.equal(blob["trigger"]["mask"], torch.ones(2))
    assert list(blob["state_dict"]) == sorted(src.state_dict())  # the same order in every process
    for state in (state_dict_of(blob), map_keys(state_dict_of(read_checkpoint(theirs)), ["module."])):
        dst = small_resnet()
        load_strict(dst, state, "test")
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))


@pytest.mark.parametrize("how", ["truncated", "empty", "junk", "torch-file"])
def test_damaged_safetensors_file_is_a_one_line_error(tmp_path: Path, how: str) -> None:
    good = encode_safetensors({"state_dict": small_resnet().state_dict()})
    path = tmp_path / "w.safetensors"
    if how == "torch-file":
        torch.save({"w": torch.ones(1)}, path)
    else:
        path.write_bytes({"truncated": good[: len(good) // 2], "empty": b"", "junk": b"hello world" * 10}[how])
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path} is not a readable safetensors file (truncated or corrupted?): SafetensorError")
    assert "\n" not in msg and not isinstance(err.value, UnsafeCheckpointError)


def test_a_safetensors_member_of_an_archive_is_located(tmp_path: Path) -> None:
    data = encode_safetensors({"state_dict": small_resnet().state_dict()})
    archive = _zip(tmp_path / "bundle.zip", {"w/model.safetensors": data, "w/README.txt": b"x"})
    entry = ZooEntry(key="cifar10/resnet18/badnets", url="http://127.0.0.1/x")
    found, member = locate(archive, entry, "a" * 64)
    assert member == "w/model.safetensors" and found.read_bytes() == data
    single = tmp_path / "model.bin"
    single.write_bytes(data)
    for fmt in ("auto", "safetensors", "checkpoint"):  # a single weights file either way
        entry = ZooEntry(key="cifar10/resnet18/badnets", url="http://127.0.0.1/x", format=fmt)
        assert locate(single, entry, "b" * 64) == (single, None)


@pytest.mark.parametrize("layout", ["raw", "rnp-dict", "dataparallel"])
def test_reference_layouts_load_exactly(tmp_path: Path, layout: str) -> None:
    src = small_resnet()
    state = src.state_dict()
    if layout == "dataparallel":
        state = {f"module.{k}": v for k, v in state.items()}
    blob = state if layout == "raw" else {"epoch": 80, "state_dict": state, "clean_acc": 0.93, "bad_acc": 1.0}
    if layout == "rnp-dict":  # the reference also stores the optimizer's state: plain containers, still safe
        blob["optimizer"] = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9).state_dict()
    path = tmp_path / "ResNet18-BadNets.tar"  # the reference names torch files *.tar
    torch.save(blob, path)
    assert sniff(path) == "checkpoint"
    dst = small_resnet()
    load_strict(dst, map_keys(state_dict_of(read_checkpoint(path)), ["module."]), "test")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))


def test_wrong_keys_are_listed(tmp_path: Path) -> None:
    state = small_resnet().state_dict()
    state["fc.weight"] = state.pop("linear.weight")
    state.pop("layer1.0.conv1.weight")
    state["conv1.weight"] = torch.zeros(8, 1, 3, 3)
    with pytest.raises(CheckpointError) as err:
        load_strict(small_resnet(), state, "zoo checkpoint x")
    msg = str(err.value)
    assert "missing (2): layer1.0.conv1.weight, linear.weight" in msg
    assert "unexpected (1): fc.weight" in msg
    assert "wrong shape (1): conv1.weight (8, 1, 3, 3) vs model (8, 3, 3, 3)" in msg


def test_old_checkpoints_without_bn_step_counters_load(tmp_path: Path) -> None:
    state = {k: v for k, v in small_resnet().state_dict().items() if not k.endswith("num_batches_tracked")}
    load_strict(small_resnet(), state, "old")


def test_not_a_state_dict_says_what_it_found() -> None:
    with pytest.raises(CheckpointError, match=r"found \['epoch', 'model'\]"):
        state_dict_of({"epoch": 3, "model": {"a": 1}})


def test_key_renames_apply_in_order() -> None:
    t = torch.zeros(1)
    out = map_keys(
        {"module.fc.weight": t, "backbone.conv1.weight": t}, ["module."], {r"^fc\.": "linear.", "^backbone\\.": ""}
    )
    assert set(out) == {"linear.weight", "conv1.weight"}
    with pytest.raises(CheckpointError, match="two keys to 'a'"):
        map_keys({"module.a": t, "a": t}, ["module."])


# --- archives ------------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info in members:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "make,needle",
    [
        (
            lambda d: _zip(d / "a.zip", {"ok.txt": b"1", "../escape.txt": b"x"}),
            "'../escape.txt' would be written outside",
        ),
        (lambda d: _zip(d / "a.zip", {"/abs/escape.txt": b"x"}), "'/abs/escape.txt' would be written outside"),
        (lambda d: _tar(d / "a.tgz", [tarfile.TarInfo("x/../../escape.txt")], {"x/../../escape.txt": b"x"}), "outside"),
        (lambda d: _tar(d / "a.tgz", [_link("data/etc", "/etc")]), "link 'data/etc' -> '/etc' leads out"),
        (lambda d: _tar(d / "a.tgz", [_link("data/up", "../../..")]), "leads out of the target"),
        (lambda d: _tar(d / "a.tgz", [_link("data/hard", "../outside", tarfile.LNKTYPE)]), "leads out of the target"),
    ],
    ids=["zip-dotdot", "zip-absolute", "tar-dotdot", "tar-symlink-abs", "tar-symlink-up", "tar-hardlink-up"],
)
def test_archives_escaping_their_directory_are_refused_whole(tmp_path: Path, make, needle: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    archive = make(src)
    target = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError, match="Nothing was extracted") as err:
        extract(archive, target)
    assert needle in str(err.value)
    assert (
        not target.exists()
        and not (tmp_path / "escape.txt").exists()
        and not (tmp_path / "deep" / "escape.txt").exists()
    )
    assert list((tmp_path / "deep").iterdir()) == []  # no temp dir left behind


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="'link' is a symbolic link"):
        extract(archive, tmp_path / "out")


@pytest.mark.skipif(not archives.HAS_DATA_FILTER, reason="this Python's tarfile has no data filter: links refused")
def test_links_inside_the_tree_and_plain_members_extract(tmp_path: Path) -> None:
    members = [tarfile.TarInfo("d/a.txt"), _link("d/b.txt", "a.txt")]
    archive = _tar(tmp_path / "ok.tgz", members, {"d/a.txt": b"hello"})
    out = extract(archive, tmp_path / "out")
    assert (out / "d" / "b.txt").read_text() == "hello"


def test_without_the_stdlib_filter_links_are_refused_and_members_are_plain_data(tmp_path: Path, monkeypatch) -> None:
    """An older Python (Debian 12's 3.11.2) has no tarfile.data_filter: what the fallback does, on any Python."""
    monkeypatch.setattr(archives, "HAS_DATA_FILTER", False)
    linked = _tar(tmp_path / "l.tgz", [tarfile.TarInfo("d/a.txt"), _link("d/b.txt", "a.txt")], {"d/a.txt": b"hi"})
    with pytest.raises(UnsafeArchiveError, match=r"'d/b.txt' is a link, and this Python .* has no tarfile extraction"):
        extract(linked, tmp_path / "out1")
    assert not (tmp_path / "out1").exists()
    setuid = tarfile.TarInfo("d/run.sh")
    setuid.mode, setuid.uid, setuid.gid = 0o6777, 4242, 4242
    out = extract(_tar(tmp_path / "p.tgz", [setuid], {"d/run.sh": b"x"}), tmp_path / "out2")
    written = (out / "d" / "run.sh").stat()
    assert written.st_mode & 0o7777 == 0o755 and written.st_uid == os.geteuid()  # no set-id bits, no group write
    assert (out / "d").stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_sniff_tells_checkpoints_from_archives_by_content(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1)}, tmp_path / "new.tar")
    torch.save({"w": torch.ones(1)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    _zip(tmp_path / "bundle.pt", {"a/model.pt": b"x"})
    _tar(tmp_path / "bundle.tgz", [tarfile.TarInfo("x.pt")], {"x.pt": b"x"})
    kinds = {p.name: sniff(p) for p in tmp_path.iterdir()}
    assert kinds == {"new.tar": "checkpoint", "old.pt": "checkpoint", "bundle.pt": "zip", "bundle.tgz": "tar"}


def test_member_choice_in_an_archive_of_several(tmp_path: Path) -> None:
    names = ["weights/ResNet18-BadNets-target0.tar", "weights/ResNet18-Blend-target0.tar"]
    assert pick_member(names, "*badnet*", "a") == names[0]
    assert pick_member(names[:1], None, "a") == names[0]
    with pytest.raises(CheckpointError, match="holds 2 checkpoints: weights/ResNet18-BadNets"):
        pick_member(names, None, "a")
    with pytest.raises(CheckpointError, match="no checkpoint matching '\\*wanet\\*'; it holds: weights/"):
        pick_member(names, "*wanet*", "a")


def test_a_symlink_chain_climbing_out_is_unsafe_not_damaged(tmp_path: Path) -> None:
    """Each link alone stays inside; together they climb out. The stdlib filter's refusal is 'unsafe'."""
    members = [_link("sub/link", ".."), _link("sub/link/x", "../.."), tarfile.TarInfo("sub/link/x/escape.txt")]
    archive = _tar(tmp_path / "chain.tgz", members, {"sub/link/x/escape.txt": b"x"})
    target = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError, match="Nothing was extracted"):
        extract(archive, target)
    assert not target.exists() and not (tmp_path / "escape.txt").exists()


def _bomb_zip(path: Path, mib: int) -> Path:
    """A zip of zeros: a few hundred kB that expands to `mib` MiB (written in chunks, never held whole)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf, zf.open("zeros.bin", "w") as f:
        chunk = bytes(2**20)
        for _ in range(mib):
            f.write(chunk)
    return path


def _bomb_tar(path: Path, mib: int) -> Path:
    class Zeros(io.RawIOBase):
        def __init__(self) -> None:
            self.left = mib * 2**20

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    info = tarfile.TarInfo("zeros.bin")
    info.size = mib * 2**20
    with tarfile.open(path, "w:gz", compresslevel=9) as tf:
        tf.addfile(info, Zeros())
    return path


@pytest.mark.parametrize("make", [_bomb_zip, _bomb_tar], ids=["zip", "tar.gz"])
def test_an_archive_bomb_is_refused_before_anything_is_written(tmp_path: Path, make) -> None:
    archive = make(tmp_path / "bomb", 300)
    assert archive.stat().st_size < 2 * 2**20
    target = tmp_path / "deep" / "out"
    with pytest.raises(ArchiveTooLargeError, match="exceeds the bounds") as err:
        extract(archive, target)
    assert "300.0 MiB" in str(err.value)
    assert not target.exists() and list((tmp_path / "deep").iterdir()) == []


def test_an_archive_larger_than_the_free_space_says_so(tmp_path: Path, monkeypatch) -> None:
    archive = _zip(tmp_path / "a.zip", {"a.bin": bytes(range(256)) * 4096})  # 1 MiB, barely compressible
    free = shutil.disk_usage(tmp_path)._replace(free=2**19)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: free)
    with pytest.raises(DiskFullError, match=r"needs about 1\.0 MiB"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
