"""The weights zoo: registry, model.source modes, the RNP entry, export, and a run that takes its model from the zoo."""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import logging
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from safetensors import safe_open

from benchmark.core.archs import build_arch
from benchmark.core.errors import ConfigError, DiskFullError
from benchmark.run.config import build_run_config
from benchmark.run.export import export_cell, export_config, log_artifact
from benchmark.run.model import new_model, zoo_settings
from benchmark.run.runtime import setup_runtime
from benchmark.sources.fetch import GDRIVE_ENV, ChecksumError, FetchError, meta_path
from benchmark.weights.checkpoint import LAYOUT, CheckpointError, UnsafeCheckpointError
from benchmark.weights.zoo import ZooMismatchError, load_registry, model_from_zoo
from tests.conftest import CONF, FAST, compose_cfg
from tests.helpers.checkpoints import Payload
from tests.helpers.cli import run_cli
from tests.helpers.fileserver import FileServer

CPU = torch.device("cpu")
RNP_ID = "1B4eHfsTyw_Qj-XgZc2byYDT_95TLjtLj"


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zoo_model(parts):
    return model_from_zoo(
        parts.model, parts.key.model_key(), zoo_settings(parts), parts.attack, lambda: new_model(parts, CPU)
    )


# --- registry ------------------------------------------------------------------------------------


def test_builtin_registry_holds_the_rnp_badnets_entry() -> None:
    entry = load_registry()["cifar10/resnet18/badnets"]
    assert entry.gdrive == RNP_ID and entry.sha256 is None and entry.member == "*badnet*"
    assert entry.attack == {"target": 0, "poison_rate": 0.1, "label_mode": "all2one", "cell_px": None}


@pytest.mark.parametrize(
    "spec,needle",
    [
        ({"gdrive": "a", "url": "http://b"}, "exactly one of gdrive or url"),
        ({"url": "http://b/x", "sha256": "abc"}, "sha256='abc' is invalid"),
        ({"url": "http://b/x", "file": "../x"}, "file='../x' is invalid"),
        ({"gdrive": "x/../../../ESCAPE"}, "gdrive='x/../../../ESCAPE' is invalid"),
        ({"gdrive": ".."}, "gdrive='..' is invalid"),
        ({"url": "http://b/x", "file": ".hidden"}, "file='.hidden' is invalid"),
        ({"url": "http://b/x", "format": "rar"}, "format='rar' is invalid"),
        ({"url": "http://b/x", "colour": 1}, "unexpected keyword argument 'colour'"),
    ],
)
def test_bad_registry_entries_fail_clearly(tmp_path: Path, spec: dict, needle: str) -> None:
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"embedded/convnet/badnets": spec}))
    with pytest.raises(ConfigError) as err:
        load_registry([path])
    assert needle in str(err.value)


@pytest.mark.parametrize("url", ["http://b/..", "http://b/a/%2e%2e", "http://b/", "http://b/x?y=../../z"])
def test_a_registry_url_never_names_a_file_outside_the_zoo_folder(tmp_path: Path, url: str) -> None:
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"embedded/convnet/badnets": {"url": url}}))
    name = load_registry([path])["embedded/convnet/badnets"].cache_name()
    zoo = tmp_path / "zoo"
    assert (zoo / name).resolve().parent == zoo.resolve()
    assert "/" not in name and name not in ("", ".", "..")


# --- model.source modes on a small served checkpoint ----------------------------------------------

SMALL = [*FAST, "arch.kwargs.width=8"]


def _small_entry(tmp_path: Path, server: FileServer, blob: object, **over: object) -> list[str]:
    """Serve `blob` as a checkpoint and register it for the FAST cell; returns the config overrides."""
    path = tmp_path / "served.pt"
    torch.save(blob, path)
    server.files["m.pt"] = path.read_bytes()
    entry = {
        "url": server.url("m.pt"),
        "sha256": sha(server.files["m.pt"]),
        "arch_kwargs": {"width": 8, "stem_stride": 2, "head": 0},
        "input": {"size": 28, "num_classes": 10},
        "attack": {"target": 0, "poison_rate": 0.1},
        **over,
    }
    registry = tmp_path / "lab_zoo.yaml"
    registry.write_text(yaml.safe_dump({"embedded/convnet/badnets": entry}))
    return [*SMALL, f"model.zoo_files=[{registry}]"]


def _state(parts) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return new_model(parts, CPU).net.state_dict()


def test_zoo_model_is_fetched_verified_loaded_and_cached(tmp_home, server, tmp_path) -> None:
    parts = build_run_config(compose_cfg(SMALL))
    state = _state(parts)
    parts = build_run_config(compose_cfg([*_small_entry(tmp_path, server, {"state_dict": state}), "model.source=zoo"]))
    got = _zoo_model(parts)
    assert got is not None and got.sha256 == sha(server.files["m.pt"])
    assert all(torch.equal(state[k], v) for k, v in got.model.net.state_dict().items())
    assert got.meta["zoo"]["entry"] == "embedded/convnet/badnets"
    assert _zoo_model(parts) is not None and server.gets("m.pt") == 1  # the second run does not download


def test_auto_falls_back_with_one_line_when_the_zoo_is_unreachable(tmp_home, server, tmp_path, caplog) -> None:
    overrides = [*_small_entry(tmp_path, server, {"state_dict": {}}), "model.retries=0"]
    server.close()
    parts = build_run_config(compose_cfg(overrides))
    with caplog.at_level(logging.INFO, logger="benchmark.weights.zoo"):
        assert _zoo_model(parts) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "benchmark.weights.zoo"]
    assert len(lines) == 1
    assert lines[0].startswith("model: zoo entry embedded/convnet/badnets not usable (Could not download")
    assert lines[0].endswith("model.source=auto: using the cache, else training")
    parts = build_run_config(compose_cfg([*overrides, "model.source=zoo"]))
    with pytest.raises(FetchError, match="save it as"):
        _zoo_model(parts)


def test_integrity_failures_stop_the_run_even_in_auto(tmp_home, server, tmp_path) -> None:
    parts = build_run_config(compose_cfg(SMALL))
    overrides = _small_entry(tmp_path, server, {"state_dict": _state(parts)}, sha256="ab" * 32)
    with pytest.raises(ChecksumError, match="it is not the published file"):
        _zoo_model(build_run_config(compose_cfg(overrides)))
    sentinel = tmp_path / "pwned"
    overrides = _small_entry(tmp_path, server, {"state_dict": _state(parts), "x": Payload(sentinel)})
    with pytest.raises(UnsafeCheckpointError, match="unsupported global exec"):
        _zoo_model(build_run_config(compose_cfg(overrides)))
    assert not sentinel.exists()


def test_a_full_disk_during_a_zoo_download_stops_the_run_even_in_auto(tmp_home, server, tmp_path, monkeypatch):
    """Training instead would fill the same disk with the model cache: the run stops with the one message
    (simulated: every write to gdown's partial file fails with ENOSPC)."""

    def full(path: str, mode: str = "r", *args: object, **kw: object):  # type: ignore[no-untyped-def]
        if mode == "ab":  # gdown's partial file
            raise OSError(errno.ENOSPC, "No space left on device")
        return open(path, mode, *args, **kw)  # type: ignore[call-overload]

    parts = build_run_config(compose_cfg(SMALL))
    overrides = [*_small_entry(tmp_path, server, {"state_dict": _state(parts)}), "model.retries=0"]
    monkeypatch.setattr(importlib.import_module("gdown.download"), "open", full, raising=False)
    with pytest.raises(DiskFullError, match=r"No space left on the device holding .*zoo while downloading"):
        _zoo_model(build_run_config(compose_cfg(overrides)))


def test_wrong_keys_fall_back_in_auto_and_fail_in_zoo(tmp_home, server, tmp_path, caplog) -> None:
    wide = build_arch("convnet", 10, 1, width=16, stem_stride=2).state_dict()
    overrides = _small_entry(tmp_path, server, wide)
    with caplog.at_level(logging.WARNING, logger="benchmark.weights.zoo"):
        assert _zoo_model(build_run_config(compose_cfg(overrides))) is None
    assert "does not fit the model: wrong shape" in caplog.text
    with pytest.raises(CheckpointError, match=r"wrong shape \(\d+\): .*\(16, 1, 3, 3\) vs model \(8, 1, 3, 3\)"):
        _zoo_model(build_run_config(compose_cfg([*overrides, "model.source=zoo"])))


def test_entry_trained_under_other_settings_is_not_used(tmp_home, server, tmp_path, caplog) -> None:
    overrides = _small_entry(tmp_path, server, {"state_dict": {}})
    with pytest.raises(ZooMismatchError, match=r"trained with attack.poison_rate=0.1 \(this cell: 0.05\)"):
        _zoo_model(build_run_config(compose_cfg([*overrides, "model.source=zoo", "attack.poison_rate=0.05"])))
    with caplog.at_level(logging.WARNING, logger="benchmark.weights.zoo"):
        assert _zoo_model(build_run_config(compose_cfg([*overrides, "attack.target=3"]))) is None
    assert "attack.target=0 (this cell: 3)" in caplog.text and server.requests == []


def test_train_never_asks_the_zoo_and_zoo_needs_an_entry(tmp_home, server, tmp_path) -> None:
    overrides = _small_entry(tmp_path, server, {"state_dict": {}})
    assert _zoo_model(build_run_config(compose_cfg([*overrides, "model.source=train"]))) is None
    assert server.requests == []
    with pytest.raises(ConfigError, match="no entry embedded/convnet/badnets; entries: cifar10/resnet18/badnets"):
        _zoo_model(build_run_config(compose_cfg([*SMALL, "model.source=zoo"])))
    with pytest.raises(ConfigError, match="source='cloud' is invalid"):
        build_run_config(compose_cfg([*SMALL, "model.source=cloud"]))


# --- the RNP entry, with a local server standing in for Google Drive -------------------------------


def test_rnp_entry_takes_the_badnets_checkpoint_from_an_archive_of_several(tmp_home, server, monkeypatch, caplog):
    """The RNP Drive file may be an archive holding several attacks' checkpoints (RNP's own dict format)."""
    torch.manual_seed(0)
    net = build_arch("resnet18", 10)
    rnp = {"epoch": 80, "state_dict": net.state_dict(), "clean_acc": 0.934, "bad_acc": 1.0}
    buf = Path(tmp_home / "badnets.tar")
    torch.save(rnp, buf)
    other = Path(tmp_home / "blend.tar")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    archive = tmp_home / "weights.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(buf, "RNP/weights/ResNet18-ResNet-BadNets-target0-portion0.1-epoch80.tar")
        zf.write(other, "RNP/weights/ResNet18-ResNet-Blend-target0-portion0.1-epoch80.tar")
        zf.writestr("__MACOSX/RNP/weights/._ResNet18-ResNet-BadNets-target0-portion0.1-epoch80.tar", b"junk")
        zf.writestr("RNP/README.txt", b"weights")
    server.files[RNP_ID] = archive.read_bytes()
    monkeypatch.setenv(GDRIVE_ENV, server.base + "/{id}")
    parts = build_run_config(compose_cfg(["model.source=zoo"]))  # the paper cell: cifar10 / resnet18 / badnets
    with caplog.at_level(logging.INFO):
        got = _zoo_model(parts)
    assert got is not None
    assert all(torch.equal(v, got.model.net.state_dict()[k]) for k, v in net.state_dict().items())
    assert got.sha256 == sha(buf.read_bytes())
    assert got.meta["zoo"]["member"] == "RNP/weights/ResNet18-ResNet-BadNets-target0-portion0.1-epoch80.tar"
    assert got.meta["checkpoint_meta"] == {"epoch": 80, "clean_acc": 0.934, "bad_acc": 1.0}
    digest = sha(server.files[RNP_ID])
    assert f"sha256 of rnp-backdoored-weights is not pinned; it is {digest}" in caplog.text
    cached = Path(parts.model.zoo_dir) / "rnp-backdoored-weights"
    assert json.loads(meta_path(cached).read_text())["sha256"] == digest
    assert _zoo_model(parts) is not None and server.gets(RNP_ID) == 1


# --- export, then a run that takes its model from the zoo -----------------------------------------


def _export_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("export", overrides=overrides)


def test_exported_model_served_from_a_lab_zoo_runs_end_to_end(tmp_home, server, tmp_path) -> None:
    out = tmp_path / "exports"
    tiny = [*SMALL, "dataset.train_limit=600", "dataset.test_limit=200"]  # cost is not what is tested
    parts, settings = export_config(_export_cfg([*tiny, f"export.dir={out}", f"export.url={server.base}/zoo"]))
    exported = export_cell(parts, settings, setup_runtime(0, "cpu"))  # seeded as `python -m benchmark.export` is
    log_artifact(parts, settings, tmp_path, exported)  # logger=none: nothing to log, must not fail
    entry = yaml.safe_load(exported.entry_file.read_text())["embedded/convnet/badnets"]
    assert entry["url"] == f"{server.base}/zoo/embedded-convnet-badnets-seed0.safetensors"
    assert entry["format"] == "safetensors" and entry["sha256"] == sha(exported.checkpoint.read_bytes())
    assert set(entry["reported"]) == {"clean_acc", "asr", "robust_acc"}
    with safe_open(exported.checkpoint, "pt") as f:  # weights and trigger tensors only: nothing to unpickle
        tag, names = f.metadata(), list(f.keys())
    assert tag == LAYOUT and names and all(k.startswith(("state_dict.", "trigger.")) for k in names)
    side = json.loads(exported.sidecar.read_text())  # the metadata, as JSON beside it
    assert exported.sidecar.name == "embedded-convnet-badnets-seed0.json" and side["sha256"] == entry["sha256"]
    assert side["meta"]["key"] == "embedded/convnet/badnets" and set(entry["reported"]) <= set(side["meta"])
    server.files["zoo/embedded-convnet-badnets-seed0.safetensors"] = exported.checkpoint.read_bytes()

    user = tmp_path / "user"  # another machine: empty caches
    user.mkdir()
    run_dir = user / "run"
    zoo = ["model.source=zoo", f"model.zoo_files=[{exported.entry_file}]"]
    short_rnp = ["defense.unlearn_epochs=2", "defense.recover_epochs=2"]
    args = [*tiny, *zoo, *short_rnp, f"hydra.run.dir={run_dir}"]
    proc = run_cli(args, user)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["model_source"] == "zoo" and result["model_sha256"] == entry["sha256"]
    assert result["weights_sha256"].startswith("sha256:")
    before = {k: round(v, 6) for k, v in result["before"].items()}
    assert before == entry["reported"], (before, entry["reported"])
    assert result["defense_info"]["curve"] and set(result["after"]) == {"clean_acc", "asr", "robust_acc"}
    assert not (user / "bench" / "models").exists() or not any((user / "bench" / "models").glob("*.safetensors"))
    assert "model: from the zoo, entry embedded/convnet/badnets" in (run_dir / "benchmark.log").read_text()


@pytest.mark.slow
def test_export_logs_a_wandb_model_artifact_offline(tmp_home, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE")
    parts, settings = export_config(
        _export_cfg([*SMALL, f"export.dir={tmp_path / 'x'}", "logger=wandb", "logger.mode=offline"])
    )
    log_artifact(parts, settings, tmp_path, export_cell(parts, settings, CPU))
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and b"embedded-convnet-badnets-seed0.zoo.yaml" in runs[0].read_bytes()
