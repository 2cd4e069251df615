"""ImageNet-12: fetch the archive (local server standing in for Drive), find its folders in any layout, decode once."""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.core.errors import DataMissingError
from benchmark.sources import imagenet12, load_dataset, resized
from benchmark.sources.archives import UnsafeArchiveError
from benchmark.sources.fetch import GDRIVE_ENV
from benchmark.sources.source import Source
from tests.conftest import composed_source
from tests.helpers.fileserver import FileServer

ID = composed_source("imagenet12").files["archive"].gdrive
SOURCE = composed_source("imagenet12")
CLASSES = ["n01440764", "n02102040", "n02979186"]  # synset-style folder names; labels follow sorted order


def _image(colour: int, fmt: str) -> bytes:
    """A tiny non-square image whose mean tells its class apart after resizing."""
    arr = np.full((6, 10, 3), colour, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _tree(prefix: str, test_name: str = "val") -> dict[str, bytes]:
    """train: 2 images per class (one JPEG, one PNG); val: 1 per class."""
    files = {}
    for i, c in enumerate(CLASSES):
        colour = 40 + 80 * i
        files[f"{prefix}train/{c}/{c}_1.JPEG"] = _image(colour, "JPEG")
        files[f"{prefix}train/{c}/{c}_2.png"] = _image(colour, "PNG")
        files[f"{prefix}{test_name}/{c}/{c}_val.JPEG"] = _image(colour, "JPEG")
    return files


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _nested(bare: bool) -> bytes:
    """An archive of archives: train.tar and val.zip inside a zip, holding train/<class> or <class> directly."""
    tree = _tree("")
    train = {k[6 * bare :]: v for k, v in tree.items() if k.startswith("train/")}
    val = {k[4 * bare :]: v for k, v in tree.items() if k.startswith("val/")}
    return _zip({"imagenet12/train.tar": _tar(train, "w"), "imagenet12/val.zip": _zip(val)})


LAYOUTS = {
    "top-level": lambda: _zip(_tree("")),
    "one-folder-test-named": lambda: _tar(_tree("ImageNet12/", "test")),
    "two-folders-macos-junk": lambda: _zip(
        {
            **_tree("data/sub-imagenet-12/", "validation"),
            "__MACOSX/data/._train": b"junk",
            "data/sub-imagenet-12/.DS_Store": b"junk",
            "data/sub-imagenet-12/readme.txt": b"12 classes",
        }
    ),
    "nested-archives": lambda: _nested(bare=False),
    "nested-archives-of-class-folders": lambda: _nested(bare=True),
}


@pytest.fixture
def drive(monkeypatch):
    srv = FileServer()
    monkeypatch.setenv(GDRIVE_ENV, srv.base + "/{id}")
    yield srv
    srv.close()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_plausible_layout_loads_as_224_uint8_and_is_cached(layout: str, drive, tmp_home) -> None:
    drive.files[ID] = LAYOUTS[layout]()
    root = tmp_home / "data" / "imagenet12"
    train, test = load_dataset("imagenet12", tmp_home / "data", SOURCE)
    assert train.x.shape == (6, 3, 224, 224) and test.x.shape == (3, 3, 224, 224)
    assert train.x.dtype == torch.uint8 and train.y.tolist() == [0, 0, 1, 1, 2, 2] and test.y.tolist() == [0, 1, 2]
    means = [float(train.x[train.y == k].float().mean()) for k in range(3)]
    assert means == sorted(means) and abs(means[0] - 40) < 3 and abs(means[2] - 200) < 3  # right image, right label
    assert (root / "imagenet12_224.pt").exists()
    again, _ = load_dataset("imagenet12", tmp_home / "data", SOURCE)
    assert torch.equal(again.x, train.x) and drive.gets(ID) == 1


def test_folders_extracted_by_hand_need_no_download(drive, tmp_home) -> None:
    root = tmp_home / "data" / "imagenet12"
    for name, data in _tree("by-hand/").items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    train, test = imagenet12.load(root, Source(download=False))
    assert len(train) == 6 and len(test) == 3 and drive.requests == []


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", ["truncated", "pickled-code"])
def test_a_read_only_data_folder_is_read_and_its_resized_file_kept_in_the_own_cache(
    damage: str, drive, tmp_home, monkeypatch, caplog
) -> None:
    """A lab's folder of images mounted read-only (simulated: tests run as root, whom file modes do not stop, so
    the write probe answers for it as such a mount does: EROFS). Its resized file is untrusted: one that does
    not load is passed over and rebuilt in the own cache, never written over there."""
    lab = tmp_home / "lab" / "imagenet12"
    for name, data in _tree("").items():
        (lab / name).parent.mkdir(parents=True, exist_ok=True)
        (lab / name).write_bytes(data)
    monkeypatch.setattr(resized, "write_probe", lambda f: "Read-only file system" if f == lab else None)
    before, own = _files(lab), tmp_home / "bench" / "data" / "imagenet12" / "imagenet12_224.pt"
    with caplog.at_level(logging.INFO, logger="benchmark.sources"):
        train, _ = imagenet12.load(lab, Source(download=False))
    assert own.exists() and _files(lab) == before and "is read-only; its resized images are kept in your" in caplog.text
    shutil.move(own, lab / "imagenet12_224.pt")  # the lab's resized file, when there, is used as it is
    real_decode = imagenet12.decode
    monkeypatch.setattr(imagenet12, "decode", None)  # nothing decoded
    again, _ = imagenet12.load(lab, Source(download=False))
    assert torch.equal(again.x, train.x) and not own.exists()
    del again  # it maps the file, which is replaced (a new file renamed over it, as a lab would) below
    bad = lab / "bad.pt"
    if damage == "truncated":
        bad.write_bytes((lab / "imagenet12_224.pt").read_bytes()[:5000])
    else:  # weights_only refuses a class it does not know, whatever it would run
        torch.save({"train_x": torch.zeros(1), "code": argparse.Namespace(x=1)}, bad)
    bad.replace(lab / "imagenet12_224.pt")
    before = _files(lab)
    monkeypatch.setattr(imagenet12, "decode", real_decode)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="benchmark.sources"):
        third, _ = imagenet12.load(lab, Source(download=False))
    assert torch.equal(third.x, train.x) and own.exists() and _files(lab) == before
    assert f"{lab / 'imagenet12_224.pt'} is not usable" in caplog.text


def test_archive_escaping_its_folder_is_refused(drive, tmp_home) -> None:
    drive.files[ID] = _zip({**_tree(""), "../../evil.txt": b"x"})
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./\.\./evil\.txt' would be written outside"):
        load_dataset("imagenet12", tmp_home / "data", SOURCE)
    assert not list(tmp_home.rglob("evil.txt"))


def test_flat_val_folder_is_named(drive, tmp_home) -> None:
    tree = {k: v for k, v in _tree("").items() if k.startswith("train/")}
    tree |= {f"val/ILSVRC2012_val_{i:08d}.JPEG": _image(9, "JPEG") for i in range(3)}
    drive.files[ID] = _zip(tree)
    with pytest.raises(DataMissingError, match="holds images but no class folders"):
        load_dataset("imagenet12", tmp_home / "data", SOURCE)


def test_archive_without_train_and_val_says_what_it_holds(drive, tmp_home) -> None:
    drive.files[ID] = _zip({"photos/a.JPEG": _image(1, "JPEG")})
    with pytest.raises(DataMissingError, match=r"no train/ and val/ folders .* top level: photos"):
        load_dataset("imagenet12", tmp_home / "data", SOURCE)


def test_offline_fails_within_seconds_with_what_to_download_and_where(tmp_home, monkeypatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(GDRIVE_ENV, f"http://127.0.0.1:{port}/{{id}}")
    root = tmp_home / "data" / "imagenet12"
    start = time.perf_counter()
    with pytest.raises(DataMissingError) as err:
        load_dataset("imagenet12", tmp_home / "data", SOURCE)
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert f"https://drive.google.com/uc?id={ID}" in msg and f"save it as {root / 'imagenet12-archive'}" in msg
    assert f"extract it by hand anywhere under {root}" in msg and "experiment=quickstart" in msg


def test_download_false_and_nothing_there(tmp_home) -> None:
    with pytest.raises(DataMissingError, match=r"not found in .* and dataset\.download=false"):
        load_dataset("imagenet12", tmp_home / "data", composed_source("imagenet12", "dataset.download=false"))


def test_resnet18_imagenet_has_torchvision_layout_and_loads_its_checkpoints() -> None:
    import torchvision

    from benchmark.core.archs import build_classifier
    from benchmark.weights.checkpoint import load_strict

    reference = torchvision.models.resnet18(num_classes=12).state_dict()
    model = build_classifier("resnet18_imagenet", 12, 3, [0.5] * 3, [0.25] * 3)
    assert {k: v.shape for k, v in model.net.state_dict().items()} == {k: v.shape for k, v in reference.items()}
    load_strict(model.net, reference, "torchvision resnet18")
    assert torch.equal(
        model.net.state_dict()["layer2.0.downsample.0.weight"], reference["layer2.0.downsample.0.weight"]
    )
