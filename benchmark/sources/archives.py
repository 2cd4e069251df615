"""What a downloaded file is (a checkpoint, a safetensors file or an archive), and safe extraction of archives.

PyTorch checkpoints are themselves zip files (and very old ones tar files), so the kind is told from
the contents, never from the name: the RNP weights are torch files named `*.tar`, and a Google Drive
download is cached under its file id, with no suffix at all.

Extraction is all or nothing: every member is checked before anything is written, and an archive with
an absolute path, a `..` component, a link leading out of the target, or a device file is refused
whole. Members land in a temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import gzip
import logging
import lzma
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Literal

from benchmark.core.errors import BenchmarkError, DiskFullError, human_size
from benchmark.core.io import current_umask, disk_full, honour_umask

log = logging.getLogger(__name__)

Kind = Literal["checkpoint", "safetensors", "zip", "tar"]
TORCH_LEGACY_TAR = {"pickle", "storages", "tensors"}


# tarfile's extraction filters came with Python 3.10.12, 3.11.4 and 3.12 (Debian 12's own python3 is 3.11.2).
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
_FILTER_ERROR: type[Exception] | tuple[()] = getattr(tarfile, "FilterError", ())


class UnsafeArchiveError(BenchmarkError):
    """An archive member would be written outside the target directory (or is a device/link out)."""


TAR_MAGIC_OFFSET = 257  # "ustar" in a POSIX/GNU tar header
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz
SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' own limit on its JSON header
# Bounds on what one archive may write: ImageNet-12 (several GB of JPEGs, ~1:1) and GTSRB (PPM zips, a few
# times their size) fit far inside them; a bomb (kB expanding to GB) does not.
MAX_TOTAL_BYTES = 256 * 2**30  # 256 GiB
MAX_MEMBERS = 5_000_000
MAX_RATIO = 200  # expanded size / archive size, once past FREE_BYTES
FREE_BYTES = 256 * 2**20  # an archive may always expand to this much, whatever its ratio


class ArchiveTooLargeError(UnsafeArchiveError):
    """An archive would expand beyond the bounds (an archive bomb), or beyond the free space of its folder."""


def looks_like_safetensors(head: bytes) -> bool:
    """Whether a file starting with `head` is a safetensors file: its JSON header's length, then `{`.

    A torch zip ("PK..."), a pickle (0x80 ...) or a tar (a member name) read as that 8-byte little-endian
    length gives far more than the limit, so they are never taken for one; a truncated safetensors file still is.
    """
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size <= SAFETENSORS_MAX_HEADER and head[8:9] == b"{"


def _tar_names(path: Path) -> set[str] | None:
    """The member names when `path` is a tar (plain by its header, or compressed), else None.

    Checked before zip: a tar whose last member is a zip (a torch checkpoint) would pass is_zipfile,
    which looks for a zip end record anywhere near the end of the file.
    """
    with open(path, "rb") as f:
        head = f.read(TAR_MAGIC_OFFSET + 8)
    plain = head[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + 5] == b"ustar"
    if not plain and not head.startswith(COMPRESSED_MAGIC):
        return None
    try:
        tf = tarfile.open(path)  # noqa: SIM115  (closed by the with below; its opening is what tells a tar)
    except (tarfile.TarError, OSError, EOFError):  # a gzip of one file that is no tar
        return None
    with _reading(path), tf:  # its first header is a tar's: failing past it means a truncated or damaged tar
        return set(tf.getnames())


def sniff(path: Path, declared: Kind | Literal["auto"] = "auto") -> Kind:
    """`checkpoint` (torch zip, torch legacy tar or bare pickle), `safetensors`, or a `zip`/`tar` archive.

    Order: a tar by its header; then the `declared` kind (a zoo entry's `format`) when the file can be
    one; then safetensors by its header; then a zip (a torch checkpoint when it holds data.pkl and a
    version record); else a checkpoint.
    """
    names = _tar_names(path)
    if names is not None:
        return "checkpoint" if names >= TORCH_LEGACY_TAR and declared != "tar" else "tar"
    is_zip = zipfile.is_zipfile(path)
    if declared in ("checkpoint", "safetensors") or (declared == "zip" and is_zip):
        return declared
    with open(path, "rb") as f:
        if looks_like_safetensors(f.read(9)):
            return "safetensors"
    if is_zip:
        with zipfile.ZipFile(path) as zf:
            zip_names = zf.namelist()
        torch_zip = any(PurePosixPath(n).name == "data.pkl" for n in zip_names) and any(
            PurePosixPath(n).name in ("version", ".format_version") for n in zip_names
        )
        return "checkpoint" if torch_zip else "zip"
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


def check_expansion(archive: Path, sizes: list[int], folder: Path) -> None:
    """Refuse, before writing anything, an archive whose members exceed the bounds or the free space."""
    total, count, packed = sum(sizes), len(sizes), archive.stat().st_size
    bound = min(MAX_TOTAL_BYTES, max(FREE_BYTES, MAX_RATIO * packed))
    if count > MAX_MEMBERS or total > bound:
        raise ArchiveTooLargeError(
            f"Refused to extract {archive}: {count} members expanding to {human_size(total)} from "
            f"{human_size(packed)} exceeds the bounds (at most {MAX_MEMBERS} members and {human_size(bound)}: "
            f"{MAX_RATIO} times the archive, at most {human_size(MAX_TOTAL_BYTES)}); an archive bomb or not the "
            "expected file. Nothing was extracted."
        )
    free = shutil.disk_usage(folder).free
    if total > free:
        raise DiskFullError(folder, total, f"extracting {archive.name}")


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
            if not HAS_DATA_FILTER:
                raise UnsafeArchiveError(
                    f"Refused to extract {archive}: member {member.name!r} is a link, and this Python "
                    f"({sys.version.split()[0]}) has no tarfile extraction filter to check where links lead (Python "
                    f"3.10.12+, 3.11.4+ or 3.12+ has one). Use a newer Python, or an archive without links. Nothing "
                    f"was extracted."
                )
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"Refused to extract {archive}: member {member.name!r} is a device, fifo or other special file. "
                f"Nothing was extracted."
            )


def extract(archive: Path, target: Path, kind: Kind | None = None) -> Path:
    """Extract `archive` into `target` (all members checked first; atomic: a temp dir renamed into place)."""
    return extract_many([archive], target, [kind])


def extract_many(archives: list[Path], target: Path, kinds: list[Kind | None] | None = None) -> Path:
    """Extract several archives into one `target` (GTSRB's three zips share one tree), all or nothing.

    `kinds`: each archive's kind when already known (e.g. sniffed with a zoo entry's declared format).
    """
    archives, target = [Path(a) for a in archives], Path(target)
    if target.exists():
        return target
    known = list(kinds) if kinds is not None else [None] * len(archives)
    resolved: list[Kind] = []
    for archive, kind in zip(archives, known, strict=True):
        with _reading(archive):
            kind = kind or sniff(archive)
        if kind == "checkpoint":
            raise BenchmarkError(f"{archive} is a single checkpoint, not an archive of files")
        resolved.append(kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".extracting"))
    try:
        written = 0  # bytes the archives before this one expanded to (a full disk's message counts them in)
        for archive, kind in zip(archives, resolved, strict=True):
            written = _extract_into(archive, tmp, kind, written)
        honour_umask(tmp)  # mkdtemp makes it 0700; the extracted folder is shared like any other
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("extracted %s -> %s", ", ".join(a.name for a in archives), target)
    return target


@contextlib.contextmanager
def _reading(archive: Path) -> Iterator[None]:
    """Reading errors of a truncated or corrupted archive become one error naming the file.

    The stdlib's extraction filter refusing a member (a symlink chain climbing out, say) is not damage:
    it is an unsafe archive, which stops the run in every model.source mode.
    """
    try:
        yield
    except _FILTER_ERROR as exc:
        raise UnsafeArchiveError(
            f"Refused to extract {archive}: {exc} (the standard library's extraction filter). Nothing was extracted."
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(Path(exc.filename or archive).parent, None, f"extracting {archive.name}") from exc
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
        raise DamagedArchiveError(archive, exc) from exc


def _extract_into(archive: Path, folder: Path, kind: Kind, before: int = 0) -> int:
    """Check every member of one archive, then extract it; returns `before` plus the bytes it expanded to."""
    with _reading(archive):
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, archive)
                sizes = [i.file_size for i in zf.infolist()]
                check_expansion(archive, sizes, folder)
                with _filling(folder.parent, before + sum(sizes), archive):
                    zf.extractall(folder)  # zipfile stops each member at its declared size
        else:
            with tarfile.open(archive) as tf:
                _check_tar(tf, archive)
                sizes = [m.size for m in tf.getmembers() if m.isfile()]
                check_expansion(archive, sizes, folder)
                with _filling(folder.parent, before + sum(sizes), archive):
                    _extract_tar(tf, folder)
    return before + sum(sizes)


def _extract_tar(tf: tarfile.TarFile, folder: Path) -> None:
    """Extract checked members; the stdlib's data filter is the second line of defence where this Python has it.

    Without it (an older Python) `_check_tar` has refused links, since nothing would check where a chain of them
    leads, and each member is written as plain data: no set-id bits, owned by this user.
    """
    if HAS_DATA_FILTER:
        tf.extractall(folder, filter="data")
    else:
        tf.extractall(folder, members=[_as_plain_data(m) for m in tf.getmembers()])


def _as_plain_data(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """A member as the data filter writes it: folders by the umask; files without set-id, sticky, group or other
    write bits, owner read-write, executable only if the owner may run it; owned by whoever extracts (as root,
    tarfile would otherwise chown to the archive's owners)."""
    plain = copy.copy(member)
    if member.isdir():
        plain.mode = 0o777 & ~current_umask()
    else:
        mode = member.mode & 0o755
        plain.mode = (mode if mode & 0o100 else mode & ~0o111) | 0o600
    plain.uid, plain.gid, plain.uname, plain.gname = os.geteuid(), os.getegid(), "", ""
    return plain


@contextlib.contextmanager
def _filling(folder: Path, needed: int, archive: Path) -> Iterator[None]:
    """A disk or quota that fills while members are written: one message naming the folder the archive was being
    extracted into (not the temp folder, which is removed) and the bytes the extraction needs."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, DiskFullError) or not disk_full(exc):
            raise
        raise DiskFullError(folder, needed, f"extracting {archive.name}") from None


class DamagedArchiveError(BenchmarkError):
    """An archive cannot be read to its end (truncated download, corrupted bytes)."""

    def __init__(self, archive: Path, cause: BaseException) -> None:
        self.archive = archive
        detail = next((ln for ln in str(cause).splitlines() if ln.strip()), "unreadable")
        super().__init__(f"{archive} is damaged ({type(cause).__name__}: {detail}); nothing was extracted")


ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".zip", ".tar")


def archive_stem(path: Path) -> str | None:
    """`train` for `train.tar.gz` (archives nested in an extracted archive); None for other names."""
    name = path.name
    suffix = next((x for x in ARCHIVE_SUFFIXES if name.lower().endswith(x)), None)
    return None if suffix is None else name[: -len(suffix)]
