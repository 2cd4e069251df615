"""Stand-ins for the real download sources, byte for byte in their published formats (built here, never committed).

- `cifar_archive`: `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz` as the Toronto server ships them: a
  gzipped tar of one folder holding Python 2 pickles (protocol 2, byte-string keys, numpy arrays pickled by
  numpy 1.x under `numpy.core.multiarray._reconstruct`), with the dict keys of the real batches and meta file.
- `gtsrb_archives`: the three zips torchvision's GTSRB downloads, with their inner folders, P6 PPM images of
  varied sizes and the semicolon-separated CSVs (`GT-<class>.csv`, `GT-final_test.test.csv`, `GT-final_test.csv`).
- `imagenet12_archive`: a zip of `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`.
- `rnp_checkpoint` / `rnp_weights_zip`: a checkpoint in the RNP authors' layout (`epoch`, `state_dict` with the
  key names of their CIFAR ResNet-18, `clean_acc`, `bad_acc`, `optimizer`: an SGD state with momentum buffers),
  saved by `torch.save` under the file name their code expects, alone or zipped in a `weights/` folder.

Images are the embedded Fashion-MNIST subset (real data), resized and tinted to RGB. Hashes are computed
from these bytes by the tests; nothing here claims to be the published data.
"""

from __future__ import annotations

import io
import struct
import tarfile
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.sources import load_dataset

RNP_FILE = "ResNet18-ResNet-BadNets-target0-portion0.1-epoch80.tar"
WNIDS = ["n01443537", "n01491361", "n01531178", "n01644373", "n02104029", "n02119022",
         "n02123597", "n02133161", "n02165456", "n02281406", "n02325366", "n02342885"]  # fmt: skip


TINTS = [[1.0, 0.6, 0.3], [0.3, 1.0, 0.6], [0.6, 0.3, 1.0], [1.0, 1.0, 0.3], [0.3, 1.0, 1.0],
         [1.0, 0.3, 1.0], [0.8, 0.8, 0.8], [1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 1.0]]  # fmt: skip

# ---- images -------------------------------------------------------------------------------------------------


def images(n: int, size: int = 32, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """`n` real Fashion-MNIST images as (n, size, size, 3) uint8 RGB, tinted by class, and their labels (0-9)."""
    train, test = load_dataset("embedded", Path("/unused"), False)
    data = train if split == "train" else test
    x = data.x[:n].float()  # (n, 1, 28, 28)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = data.y[:n]
    tint = torch.tensor(TINTS)
    rgb = x * tint[y].view(-1, 3, 1, 1)
    return rgb.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy().copy(), y.numpy().copy()


def spread(labels: np.ndarray, classes: int) -> list[int]:
    """Fashion labels (0-9) spread over `classes` labels, deterministically, every class present when n allows."""
    return [int((i % classes) if classes > 10 else label) for i, label in enumerate(labels)]


# ---- CIFAR: Python 2 pickles in a tar.gz ---------------------------------------------------------------------


def _py2(obj: object) -> bytes:
    """One value as Python 2's cPickle (protocol 2) wrote it: str as byte strings, arrays via numpy 1.x's reduce."""
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        if 0 <= obj < 256:
            return b"K" + bytes([obj])
        if 0 <= obj < 65536:
            return b"M" + struct.pack("<H", obj)
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, (str, bytes)):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<I", len(raw))) + raw
    if isinstance(obj, tuple):
        return b"(" + b"".join(map(_py2, obj)) + b"t"
    if isinstance(obj, list):
        return b"]" + (b"(" + b"".join(map(_py2, obj)) + b"e" if obj else b"")
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray):
        assert obj.dtype == np.uint8 and obj.flags.c_contiguous
        dtype = b"cnumpy\ndtype\n" + _py2(("u1", 0, 1)) + b"R" + _py2((3, "|", None, None, None, -1, -1, 0)) + b"b"
        state = b"(" + _py2(1) + _py2(tuple(obj.shape)) + dtype + _py2(False) + _py2(obj.tobytes()) + b"t"
        head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2((0,)) + _py2("b") + b"\x87R"
        return head + state + b"b"
    raise TypeError(f"no Python 2 pickle for {type(obj).__name__}")


def py2_pickle(obj: dict) -> bytes:
    return b"\x80\x02" + _py2(obj) + b"."


def _rows(x: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): the red plane, then green, then blue, each row-major (CIFAR's rows)."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072))


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        folders = sorted({m.split("/")[0] for m in members})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cifar_archive(kind: str = "cifar10", n_train: int = 1500, n_test: int = 500) -> bytes:
    """`cifar-10-python.tar.gz` (five train batches) or `cifar-100-python.tar.gz` (train/test), small."""
    tx, ty = images(n_train, 32, "train")
    vx, vy = images(n_test, 32, "test")
    if kind == "cifar10":
        folder, per = "cifar-10-batches-py", -(-n_train // 5)
        members = {}
        for b in range(5):
            part = slice(b * per, (b + 1) * per)
            members[f"{folder}/data_batch_{b + 1}"] = py2_pickle({
                "batch_label": f"training batch {b + 1} of 5",
                "labels": [int(v) for v in ty[part]],
                "data": _rows(tx[part]),
                "filenames": [f"standin_{b}_{i}.png" for i in range(len(ty[part]))],
            })  # fmt: skip
        members[f"{folder}/test_batch"] = py2_pickle({
            "batch_label": "testing batch 1 of 1", "labels": [int(v) for v in vy], "data": _rows(vx),
            "filenames": [f"standin_test_{i}.png" for i in range(len(vy))],
        })  # fmt: skip
        members[f"{folder}/batches.meta"] = py2_pickle({
            "num_cases_per_batch": per, "label_names": [f"class{i}" for i in range(10)], "num_vis": 3072,
        })  # fmt: skip
        members[f"{folder}/readme.html"] = b"<meta HTTP-EQUIV='REFRESH' content='0; url=http://127.0.0.1/'>\n"
        return _tar_gz(members)
    folder = "cifar-100-python"
    members = {}
    for name, x, y in (("train", tx, ty), ("test", vx, vy)):
        fine = spread(y, 100)
        members[f"{folder}/{name}"] = py2_pickle({
            "filenames": [f"standin_{name}_{i}.png" for i in range(len(y))],
            "batch_label": f"{'training' if name == 'train' else 'testing'} batch 1 of 1",
            "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": _rows(x),
        })  # fmt: skip
    members[f"{folder}/meta"] = py2_pickle({
        "fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)],
    })  # fmt: skip
    members[f"{folder}/file.txt~"] = b""  # the real archive carries this editor leftover too
    return _tar_gz(members)


# ---- GTSRB: three zips ---------------------------------------------------------------------------------------


def _ppm(img: np.ndarray, side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).resize((side, side + 3), Image.Resampling.BILINEAR).save(buf, format="PPM")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def gtsrb_archives(per_class: int = 24, n_test: int = 430) -> dict[str, bytes]:
    """`GTSRB-Training_fixed.zip`, `GTSRB_Final_Test_Images.zip`, `GTSRB_Final_Test_GT.zip` (43 classes)."""
    tx, _ = images(43 * per_class, 32, "train")
    vx, vy = images(n_test, 32, "test")
    train: dict[str, bytes] = {"GTSRB/Readme-Images.txt": b"stand-in of the GTSRB training images\n"}
    for c in range(43):
        rows = [GT_HEADER]
        for k in range(per_class):
            side = 25 + (k * 7 + c) % 40  # real signs are 15x15 to 250x250, rarely square
            name = f"{k // 30:05d}_{k % 30:05d}.ppm"
            train[f"GTSRB/Training/{c:05d}/{name}"] = _ppm(tx[c * per_class + k], side)
            rows.append(f"{name};{side};{side + 3};5;5;{side - 5};{side - 2};{c}")
        train[f"GTSRB/Training/{c:05d}/GT-{c:05d}.csv"] = ("\n".join(rows) + "\n").encode()
    labels = spread(vy, 43)
    test_img = {"GTSRB/Readme-Images-Final-test.txt": b"stand-in of the GTSRB test images\n"}
    test_rows, gt_rows = [GT_HEADER.rsplit(";", 1)[0]], [GT_HEADER]
    for i in range(n_test):
        side = 25 + (i * 11) % 40
        test_img[f"GTSRB/Final_Test/Images/{i:05d}.ppm"] = _ppm(vx[i], side)
        roi = f"{i:05d}.ppm;{side};{side + 3};5;5;{side - 5};{side - 2}"
        test_rows.append(roi)
        gt_rows.append(f"{roi};{labels[i]}")
    test_img["GTSRB/Final_Test/Images/GT-final_test.test.csv"] = ("\n".join(test_rows) + "\n").encode()
    return {
        "GTSRB-Training_fixed.zip": _zip(train),
        "GTSRB_Final_Test_Images.zip": _zip(test_img),
        "GTSRB_Final_Test_GT.zip": _zip({"GT-final_test.csv": ("\n".join(gt_rows) + "\n").encode()}),
    }


# ---- ImageNet-12: a zip of class folders ---------------------------------------------------------------------


def imagenet12_archive(per_class: int = 10, val_per_class: int = 4, side: int = 80) -> bytes:
    """A zip of `imagenet12/train/<wnid>/*.JPEG` and `imagenet12/val/<wnid>/*.JPEG`, 12 classes, JPEG-encoded."""
    n = 12 * (per_class + val_per_class)
    x, _ = images(n, 32, "train")
    members, i = {}, 0
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, wnid in enumerate(WNIDS):
            for k in range(count):
                img = Image.fromarray(x[i]).resize((side + 20, side), Image.Resampling.BILINEAR)
                img = Image.fromarray((np.asarray(img) // 2 + 10 * c).astype(np.uint8))  # class tells in the mean
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                members[f"imagenet12/{split}/{wnid}/{wnid}_{k}.JPEG"] = buf.getvalue()
                i += 1
    return _zip(members)


# ---- The RNP authors' checkpoint -----------------------------------------------------------------------------


def rnp_resnet18_shapes(num_classes: int = 10) -> list[tuple[str, tuple[int, ...]]]:
    """Key names and shapes of the RNP authors' CIFAR ResNet-18 state dict, in their order (written out here,
    not taken from our architecture, so that a drift in our names fails the zoo test)."""
    keys: list[tuple[str, tuple[int, ...]]] = [("conv1.weight", (64, 3, 3, 3))]
    keys += _bn("bn1", 64)
    cin = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            p = f"layer{stage}.{block}"
            first = cin if block == 0 else width
            keys += [(f"{p}.conv1.weight", (width, first, 3, 3)), *_bn(f"{p}.bn1", width)]
            keys += [(f"{p}.conv2.weight", (width, width, 3, 3)), *_bn(f"{p}.bn2", width)]
            if block == 0 and first != width:
                keys += [(f"{p}.shortcut.0.weight", (width, first, 1, 1)), *_bn(f"{p}.shortcut.1", width)]
        cin = width
    return [*keys, ("linear.weight", (num_classes, 512)), ("linear.bias", (num_classes,))]


def _bn(p: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{p}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{p}.num_batches_tracked", ())
    ]


def rnp_checkpoint_dict(seed: int = 0, prefix: str = "") -> dict:
    """`{"epoch", "state_dict", "clean_acc", "bad_acc", "optimizer"}` as their train_backdoor script saves it."""
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, shape in rnp_resnet18_shapes():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(15640, dtype=torch.int64)  # 80 epochs x 196 batches - 40
        elif name.endswith(("running_var", "bn1.weight", "bn2.weight", "1.weight")) and len(shape) == 1:
            state[name] = 0.5 + torch.rand(shape, generator=gen)
        elif name.endswith(("running_mean", "bias")):
            state[name] = 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[name] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    params = [v.clone().requires_grad_(True) for k, v in state.items() if not k.endswith(_BUFFERS)]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    for p in params:
        p.grad = 0.01 * torch.randn(p.shape, generator=gen)
    opt.step()  # fills the momentum buffers, as 80 epochs of training leave them
    return {
        "epoch": 79,
        "state_dict": OrderedDict((prefix + k, v) for k, v in state.items()),
        "clean_acc": 0.9341,
        "bad_acc": 1.0,
        "optimizer": opt.state_dict(),
    }


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _saved(obj: object, name: str) -> bytes:
    """`torch.save` to a file named `name` (the zip records carry the file's stem, as on the authors' disk)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        torch.save(obj, path)
        return path.read_bytes()


def rnp_checkpoint(seed: int = 0, prefix: str = "") -> bytes:
    return _saved(rnp_checkpoint_dict(seed, prefix), RNP_FILE)


def rnp_weights_zip(checkpoint: bytes) -> bytes:
    """A zip of the authors' `weights/` folder: the BadNets checkpoint beside another attack's (stored)."""
    other = _saved({"epoch": 79, "state_dict": {"linear.bias": torch.zeros(10)}}, "other.tar")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"weights/{RNP_FILE}", checkpoint)
        zf.writestr("weights/ResNet18-ResNet-Blend-target0-portion0.1-epoch80.tar", other)
    return buf.getvalue()
