"""The paper's default cell end to end, against stand-ins in the real sources' formats served from 127.0.0.1.

`python -m benchmark` fetches CIFAR-10 (mirror) and the RNP authors' checkpoint (Google Drive redirect) through
the project's own download, md5/sha256, extraction and zoo code; nothing is mocked but the host names.
The stand-ins' md5 differs from the published archive's, so the tests pin the stand-in's own md5 in
`dataset.files.archive.md5` (as a lab with a re-packed mirror would).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from attacks.badnets import BadNets
from benchmark.core.errors import DataMissingError
from benchmark.sources import load_dataset, loaders, resized
from benchmark.sources.fetch import GDRIVE_ENV, ChecksumError
from benchmark.sources.loaders import read_batch
from benchmark.sources.source import FileSpec, Source
from benchmark.weights.zoo import ModelSource, load_registry, model_from_zoo
from tests.conftest import composed_source
from tests.helpers import standins
from tests.helpers.cli import run_cli
from tests.helpers.fileserver import FileServer

REPO = Path(__file__).resolve().parents[2]
RNP_ID = load_registry()["cifar10/resnet18/badnets"].gdrive
CIFAR_SETTINGS = {
    "attack.target": 0, "attack.poison_rate": 0.1, "attack.label_mode": "all2one", "attack.cell_px": None,
    "dataset.size": 32, "dataset.num_classes": 10,
    "dataset.mean": [0.4914, 0.4822, 0.4465], "dataset.std": [0.2023, 0.1994, 0.2010],
}  # fmt: skip


@pytest.fixture(scope="module")
def blobs() -> dict[str, bytes]:
    """Every stand-in, built once per module (a few seconds)."""
    out = {
        "kriz/cifar-10-python.tar.gz": standins.cifar_archive("cifar10"),
        "kriz/cifar-100-python.tar.gz": standins.cifar_archive("cifar100"),
        f"gdrive/{RNP_ID}": standins.rnp_checkpoint(),
    }
    out |= {f"erda/{k}": v for k, v in standins.gtsrb_archives().items()}
    out[f"gdrive/{composed_source('imagenet12').files['archive'].gdrive}"] = standins.imagenet12_archive()
    return out


@pytest.fixture
def server(blobs):
    srv = FileServer(files=dict(blobs))
    yield srv
    srv.close()


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def source(srv: FileServer, dataset: str, mirror: str, **over: object) -> Source:
    """The dataset's configured files with the stand-ins' md5s pinned instead of the published ones."""
    files = {
        role: FileSpec(url=s.url, gdrive=s.gdrive, md5=md5(srv.files[f"{mirror}/{s.name}"]), sha256=s.sha256)
        for role, s in composed_source(dataset).files.items()
    }
    return Source(True, files, f"{srv.base}/{mirror}", **over)  # type: ignore[arg-type]


def data_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- fast: the byte paths one at a time --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_archive_is_fetched_verified_extracted_and_read_once(name, classes, server, tmp_home) -> None:
    root = tmp_home / "data"
    train, test = load_dataset(name, root, source(server, name, "kriz"))
    assert train.x.shape == (1500, 3, 32, 32) and test.x.shape == (500, 3, 32, 32) and train.x.dtype == torch.uint8
    assert int(train.y.max()) < classes and len(set(train.y.tolist())) == classes
    # the same images torchvision's own unpickling gives (plain pickle, latin1), in CIFAR's plane order
    folder = next((root / name).glob("extracted-*/cifar-*"))
    first = "data_batch_1" if name == "cifar10" else "train"
    with open(folder / first, "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert torch.equal(train.x[:10], torch.from_numpy(raw["data"][:10]).view(10, 3, 32, 32))
    again, _ = load_dataset(name, root, source(server, name, "kriz"))
    assert torch.equal(again.x, train.x) and len(server.requests) == 1  # the second load used the cache


def test_torchvision_rejects_the_stand_in_batches_by_their_md5(server, tmp_home) -> None:
    """Why the loader reads the batches itself: torchvision checks each file against the published md5s."""
    import torchvision.datasets as tvd

    load_dataset("cifar10", tmp_home / "data", source(server, "cifar10", "kriz"))
    extracted = next((tmp_home / "data" / "cifar10").glob("extracted-*"))
    with pytest.raises(RuntimeError, match="Dataset not found or corrupted"):
        tvd.CIFAR10(str(extracted), train=True, download=False)


def test_a_batch_naming_other_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(b"\x80\x02cposix\nsystem\nU\x04true\x85R.")
    with pytest.raises(DataMissingError, match=r"refused global posix\.system"):
        read_batch(evil)


def test_wrong_md5_stops_and_leaves_nothing_behind(server, tmp_home) -> None:
    src = source(server, "cifar10", "kriz")
    bad = {"archive": FileSpec(url=src.files["archive"].url, md5=composed_source("cifar10").files["archive"].md5)}
    with pytest.raises(ChecksumError, match=r"has md5 [0-9a-f]{32}, but c58f30108f718f92721af3b95e74349a is pinned"):
        load_dataset("cifar10", tmp_home / "data", Source(True, bad, src.mirror))
    assert data_files(tmp_home / "data" / "cifar10") == ["cifar-10-python.tar.gz.lock"]


def test_truncated_archive_without_a_pinned_hash_is_deleted_with_a_clear_message(server, tmp_home) -> None:
    body = server.files["kriz/cifar-10-python.tar.gz"]
    server.files["kriz/cifar-10-python.tar.gz"] = body[: len(body) // 2]
    url = composed_source("cifar10").files["archive"].url
    src = Source(True, {"archive": FileSpec(url=url)}, f"{server.base}/kriz")
    with pytest.raises(DataMissingError, match=r"cifar-10-python\.tar\.gz is damaged .* It was deleted"):
        load_dataset("cifar10", tmp_home / "data", src)
    assert data_files(tmp_home / "data" / "cifar10") == ["cifar-10-python.tar.gz.lock"]
    server.files["kriz/cifar-10-python.tar.gz"] = body  # the next run downloads it afresh and succeeds
    train, _ = load_dataset("cifar10", tmp_home / "data", src)
    assert len(train) == 1500 and server.gets("kriz/cifar-10-python.tar.gz") == 2


def test_gtsrb_three_zips_in_torchvision_layout(server, tmp_home) -> None:
    root = tmp_home / "data"
    train, test = load_dataset("gtsrb", root, source(server, "gtsrb", "erda", size=32))
    assert train.x.shape == (43 * 24, 3, 32, 32) and test.x.shape == (430, 3, 32, 32)
    assert train.y.tolist()[::24] == list(range(43)) and int(test.y.max()) == 42  # folder 00007 -> class 7
    assert (root / "gtsrb" / "gtsrb" / "GT-final_test.csv").exists() and (root / "gtsrb" / "gtsrb_32.pt").exists()
    before = len(server.requests)
    again, _ = load_dataset("gtsrb", root, source(server, "gtsrb", "erda", size=32))
    assert torch.equal(again.x, train.x) and len(server.requests) == before == 3


def test_a_read_only_data_folder_keeps_the_resized_gtsrb_in_the_own_cache(server, tmp_home, monkeypatch, caplog):
    """A lab's data folder holding the images but not `gtsrb_32.pt`, mounted read-only (simulated: tests run as
    root, whom file modes do not stop, so the write probe answers for it as such a mount does: EROFS)."""
    lab = tmp_home / "lab"
    src = source(server, "gtsrb", "erda", size=32)
    train, _ = load_dataset("gtsrb", lab, src)
    (lab / "gtsrb" / "gtsrb_32.pt").unlink()
    before = data_files(lab)
    monkeypatch.setattr(resized, "write_probe", lambda f: "Read-only file system" if f == lab / "gtsrb" else None)
    with caplog.at_level(logging.INFO, logger="benchmark.sources"):
        again, _ = load_dataset("gtsrb", lab, src)
    own = tmp_home / "bench" / "data" / "gtsrb"
    assert torch.equal(again.x, train.x) and data_files(lab) == before and (own / "gtsrb_32.pt").exists()
    assert f"{lab / 'gtsrb'} is read-only; its resized images are kept in your own cache {own}" in caplog.text
    monkeypatch.setattr(loaders, "_resize_pil_dataset", None)  # the next run reads the own copy: nothing decoded
    third, _ = load_dataset("gtsrb", lab, src)
    assert torch.equal(third.x, train.x) and len(server.requests) == 3 and data_files(lab) == before


def test_a_read_only_data_folder_and_an_unwritable_own_cache_still_load_with_one_warning(
    server, tmp_home, monkeypatch, caplog
):
    """Neither folder takes the resized file (both refuse, as read-only mounts do): the images still load, from
    memory, and the warning names the file and what to set; nothing is written in the lab's folder."""
    lab = tmp_home / "lab"
    src = source(server, "gtsrb", "erda", size=32)
    train, _ = load_dataset("gtsrb", lab, src)
    (lab / "gtsrb" / "gtsrb_32.pt").unlink()
    before = data_files(lab)
    own = tmp_home / "bench" / "data" / "gtsrb"
    monkeypatch.setattr(resized, "write_probe", lambda f: "Read-only file system" if f == lab / "gtsrb" else None)

    def refuse(obj, path):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(resized, "atomic_torch_save", refuse)
    with caplog.at_level(logging.WARNING, logger="benchmark.sources"):
        again, _ = load_dataset("gtsrb", lab, src)
    assert torch.equal(again.x, train.x) and data_files(lab) == before and not (own / "gtsrb_32.pt").exists()
    assert f"could not be kept as {own / 'gtsrb_32.pt'} (Read-only file system)" in caplog.text
    assert "BENCHMARK_HOME" in caplog.text


def test_imagenet12_at_a_reduced_size(server, tmp_home, monkeypatch) -> None:
    monkeypatch.setenv(GDRIVE_ENV, server.base + "/gdrive/{id}")
    train, test = load_dataset("imagenet12", tmp_home / "data", composed_source("imagenet12", "dataset.size=48"))
    assert train.x.shape == (120, 3, 48, 48) and test.x.shape == (48, 3, 48, 48)
    assert train.y.tolist()[::10] == list(range(12))  # sorted wnid folders -> classes
    assert (tmp_home / "data" / "imagenet12" / "imagenet12_48.pt").exists()


@pytest.mark.parametrize("packed", ["checkpoint", "zip"])
def test_authors_checkpoint_from_the_drive_endpoint_loads_strictly(packed, server, tmp_home, monkeypatch) -> None:
    monkeypatch.setenv(GDRIVE_ENV, server.base + "/gdrive/{id}")
    if packed == "zip":
        server.files[f"gdrive/{RNP_ID}"] = standins.rnp_weights_zip(server.files[f"gdrive/{RNP_ID}"])
    from benchmark.core.archs import build_classifier

    def build() -> torch.nn.Module:
        return build_classifier("resnet18", 10, 3, CIFAR_SETTINGS["dataset.mean"], CIFAR_SETTINGS["dataset.std"])

    cfg = ModelSource(source="zoo", zoo_dir=str(tmp_home / "zoo"))
    found = model_from_zoo(cfg, "cifar10/resnet18/badnets", CIFAR_SETTINGS, BadNets(), build)
    assert found is not None
    expected = standins.rnp_checkpoint_dict()["state_dict"]
    got = getattr(found.model, "net", found.model).state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert found.meta["checkpoint_meta"] == {"epoch": 79, "clean_acc": 0.9341, "bad_acc": 1.0}
    member = found.meta["zoo"]["member"]
    assert member == (None if packed == "checkpoint" else f"weights/{standins.RNP_FILE}")


# ---- slow: the command line, as a user runs it ------------------------------------------------------------

SMALL = [
    "device=cpu", "threads=1", "train.epochs=1", "dataset.reserve=300", "dataset.test_limit=200",
    "defense_data.size=100", "eval.batch_size=100", "defense.unlearn_epochs=2", "defense.recover_epochs=2",
    "defense.sweep_step=0.3",
]  # fmt: skip


def cli(server: FileServer, home: Path, run_dir: Path, *args: str):
    mirror = {"cifar10": "kriz", "cifar100": "kriz", "gtsrb": "erda"}
    dataset = next((a.split("=", 1)[1] for a in args if a.startswith("dataset=")), "cifar10")
    if "experiment=rnp_imagenet12" in args:
        dataset = "imagenet12"
    pins = []
    if dataset in mirror:
        m = mirror[dataset]
        pins = [f"mirror={server.base}/{m}"] + [
            f"dataset.files.{role}.md5={md5(server.files[f'{m}/{s.name}'])}"
            for role, s in composed_source(dataset).files.items()
        ]
    # PYTHONPATH: this checkout's code, not whichever copy is installed (the CLI runs in `home`)
    env = {GDRIVE_ENV: server.base + "/gdrive/{id}", "HYDRA_FULL_ERROR": None, "PYTHONPATH": str(REPO)}
    return run_cli([*SMALL, *pins, *args, f"hydra.run.dir={run_dir}"], home, timeout=900, **env)


@pytest.mark.slow
def test_the_paper_command_reaches_a_result_from_the_zoo_and_reruns_offline(server, tmp_path) -> None:
    proc = cli(server, tmp_path, tmp_path / "run1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "run1" / "result.json").read_text())
    assert result["cell"] == {
        "attack": "badnets",
        "dataset": "cifar10",
        "arch": "resnet18",
        "defense": "rnp",
        "seed": 0,
    }
    assert result["model_source"] == "zoo"
    ckpt = server.files[f"gdrive/{RNP_ID}"]
    assert result["model_sha256"] == hashlib.sha256(ckpt).hexdigest()
    assert result["model_meta"]["zoo"]["file_sha256"] == result["model_sha256"]
    assert all(0.0 <= result[p][k] <= 1.0 for p in ("before", "after") for k in ("clean_acc", "asr", "robust_acc"))
    assert sorted(p for p, _ in server.requests) == sorted(["/kriz/cifar-10-python.tar.gz", f"/gdrive/{RNP_ID}"])
    proc = cli(server, tmp_path, tmp_path / "run2")  # everything cached: no request at all
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        len(server.requests) == 2
        and json.loads((tmp_path / "run2" / "result.json").read_text())["before"] == (result["before"])
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["experiment=rnp_cifar10", "+arch.kwargs.width=8"],
        ["dataset=cifar100", "+arch.kwargs.width=8"],
        ["dataset=gtsrb", "+arch.kwargs.width=8"],
        [
            "experiment=rnp_imagenet12",
            "dataset.size=48",
            "dataset.reserve=40",
            "defense_data.size=30",
            "dataset.augment.crop_pad=6",
            "dataset.test_limit=48",
        ],
    ],
    ids=["rnp_cifar10", "cifar100", "gtsrb", "rnp_imagenet12"],
)
def test_each_stand_in_dataset_trains_and_defends_from_the_command_line(args, server, tmp_path) -> None:
    proc = cli(server, tmp_path, tmp_path / "run", "model.source=train", *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["model_source"] == "trained" and result["cell"]["defense"] == "rnp"
    assert all(0.0 <= result["after"][k] <= 1.0 for k in ("clean_acc", "asr", "robust_acc"))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["md5", "truncated"])
def test_a_corrupt_download_exits_2_without_traceback_and_half_written_files(damage, server, tmp_path) -> None:
    extra = ["dataset.files.archive.md5=c58f30108f718f92721af3b95e74349a"]
    if damage == "truncated":
        body = server.files["kriz/cifar-10-python.tar.gz"]
        server.files["kriz/cifar-10-python.tar.gz"] = body[: len(body) - 5000]
        extra = ["dataset.files.archive.md5=null"]
    proc = cli(server, tmp_path, tmp_path / "run", *extra)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in proc.stderr
    assert ("is pinned: it is not the published file" if damage == "md5" else "is damaged") in out
    data = tmp_path / "bench" / "data" / "cifar10"
    assert data_files(data) == ["cifar-10-python.tar.gz.lock"]
    assert not (tmp_path / "run" / "result.json").exists()
