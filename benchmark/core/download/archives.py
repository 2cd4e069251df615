"""What a downloaded file is (a checkpoint or an archive), and safe extraction of archives.

PyTorch checkpoints are themselves zip files (and very old ones tar files), so the kind is told from
the contents, never from the name: the RNP weights are torch files named `*.tar`.

Extraction is all or nothing: every member is checked before anything is written, and an archive with
an absolute path, a `..` component, a link leading out of the target, or a device file is refused
whole. Members land in a temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Literal

from benchmark.core.errors import BenchmarkError
from benchmark.core.io import honour_umask

log = logging.getLogger(__name__)

Kind = Literal["checkpoint", "zip", "tar"]
TORCH_LEGACY_TAR = {"pickle", "storages", "tensors"}


class UnsafeArchiveError(BenchmarkError):
    """An archive member would be written outside the target directory (or is a device/link out)."""


def sniff(path: Path) -> Kind:
    """`checkpoint` (torch zip, torch legacy tar or bare pickle), or a `zip`/`tar` archive of other files."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        torch_zip = any(PurePosixPath(n).name == "data.pkl" for n in names) and any(
            PurePosixPath(n).name in ("version", ".format_version") for n in names
        )
        return "checkpoint" if torch_zip else "zip"
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            names = set(tf.getnames())
        return "checkpoint" if names >= TORCH_LEGACY_TAR else "tar"
    return "checkpoint"


def _check_name(name: str, archive: Path) -> PurePosixPath:
    """A member name as a safe relative path, or a refusal naming the member."""
    norm = name.replace("\\", "/")
    rel = PurePosixPath(norm)
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in rel.parts:
        raise UnsafeArchiveError(
            f"Refused to extract {archive}: member {name!r} would be written outside the target directory "
            f"(absolute path or '..'). Nothing was extracted."
        )
    return rel


def _check_link(member: tarfile.TarInfo, archive: Path) -> None:
    """A tar link must point inside the archive's own tree."""
    refused = UnsafeArchiveError(
        f"Refused to extract {archive}: link {member.name!r} -> {member.linkname!r} leads out of the "
        f"target directory. Nothing was extracted."
    )
    target = PurePosixPath(member.linkname.replace("\\", "/"))
    if target.is_absolute():
        raise refused
    # A symlink is relative to its own folder; a hard link names a path from the archive root.
    base = PurePosixPath() if member.islnk() else PurePosixPath(member.name).parent
    depth = 0
    for part in (base / target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                raise refused
        elif part != ".":
            depth += 1


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> None:
    for info in zf.infolist():
        _check_name(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(
                f"Refused to extract {archive}: member {info.filename!r} is a symbolic link. Nothing was extracted."
            )


def _check_tar(tf: tarfile.TarFile, archive: Path) -> None:
    for member in tf.getmembers():
        _check_name(member.name, archive)
        if member.issym() or member.islnk():
            _check_link(member, archive)
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"Refused to extract {archive}: member {member.name!r} is a device, fifo or other special file. "
                f"Nothing was extracted."
            )


def extract(archive: Path, target: Path) -> Path:
    """Extract `archive` into `target` (all members checked first; atomic: a temp dir renamed into place)."""
    archive, target = Path(archive), Path(target)
    if target.exists():
        return target
    kind = sniff(archive)
    if kind == "checkpoint":
        raise BenchmarkError(f"{archive} is a single checkpoint, not an archive of files")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".extracting"))
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, archive)
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                _check_tar(tf, archive)
                tf.extractall(tmp, filter="data")  # the stdlib's own guard as a second line of defence
        honour_umask(tmp)  # mkdtemp makes it 0700; the extracted folder is shared like any other
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("extracted %s -> %s", archive.name, target)
    return target


ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".zip", ".tar")


def archive_stem(path: Path) -> str | None:
    """`train` for `train.tar.gz` (archives nested in an extracted archive); None for other names."""
    name = path.name
    suffix = next((x for x in ARCHIVE_SUFFIXES if name.lower().endswith(x)), None)
    return None if suffix is None else name[: -len(suffix)]
