"""Faults a hostile or unlucky user meets: each one ends in one clear message or heals itself.

Damaged model-cache entries, tars that look like zips, dribbling servers, a zoo entry whose source changed,
Ctrl-C, hand-edited results and two sweeps in one directory. Each test makes the fault, then checks the
message, the exit code, that no traceback reaches the user, and what is left on disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from filelock import FileLock
from omegaconf import OmegaConf
from safetensors import safe_open
from torch import nn

from benchmark.core.errors import INTERRUPTED_EXIT, DiskFullError
from benchmark.report.table import read_cell
from benchmark.run.record import content_digest, write_result
from benchmark.run.sweep import STALE, cell_lock, resume_check, run_sweep_cell
from benchmark.sources.archives import UnsafeArchiveError, extract, sniff
from benchmark.sources.fetch import FetchError, Remote, fetch, meta_path
from benchmark.weights import model_cache
from benchmark.weights.checkpoint import LAYOUT, UnsafeCheckpointError, encode_safetensors
from benchmark.weights.model_cache import sidecar_path
from benchmark.weights.zoo import ZooEntry, locate
from tests.conftest import TINY, compose_cfg, through_cache
from tests.helpers.checkpoints import Payload
from tests.helpers.cli import run_cli
from tests.helpers.fileserver import FileServer

# Subprocesses run in a temp dir: import this checkout's code, not whichever one is installed editable.
ROOT = str(Path(__file__).resolve().parents[2])

# ---------------------------------------------------------------- the model cache


class Trainer:
    """A training function for load_or_train that counts its calls (the rebuild must really happen)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: nn.Module) -> tuple[dict, dict]:
        self.calls += 1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.5)
        return {"trained": self.calls}, {"mask": torch.ones(2)}


KEY = "embedded-convnet-badnets-seed0-0123456789abcdef"


def _cached(tmp_path: Path) -> tuple[Path, Trainer]:
    path = tmp_path / "models" / f"{KEY}.safetensors"
    trainer = Trainer()
    _, source, _, _ = through_cache(path, nn.Linear(3, 2), trainer, {"cell": "x"})
    assert source == "trained" and trainer.calls == 1
    return path, trainer


def _forge_sidecar(path: Path) -> None:
    """Make the sidecar name the file's present sha256: then only the loader stands guard."""
    side = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps({**side, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif how == "random":
        path.write_bytes(os.urandom(4000))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "no-sidecar":
        sidecar_path(path).unlink()
    elif how == "other-key":
        side = json.loads(sidecar_path(path).read_text())
        sidecar_path(path).write_text(json.dumps({**side, "key": "some-other-entry"}))
    elif how == "bare-sidecar":  # the bare meta: trusted for an older .pt only, never for a safetensors entry
        sidecar_path(path).write_text(json.dumps({"cell": "x"}))
    else:  # a hash that matches, on content that is not a whole entry of ours
        if how == "truncated-hashed":
            path.write_bytes(path.read_bytes()[:-7])
        elif how == "wrong-shape":
            path.write_bytes(encode_safetensors({"state_dict": nn.Linear(5, 2).state_dict(), "trigger": {}}))
        elif how == "foreign-group":
            path.write_bytes(encode_safetensors({"state_dict": nn.Linear(3, 2).state_dict(), "extra": {"x": T1}}))
        elif how == "untagged":
            path.write_bytes(safetensors.torch.save(nn.Linear(3, 2).state_dict()))
        elif how == "pickle":  # a torch file carrying code, under the safetensors name: never unpickled
            torch.save({"state_dict": nn.Linear(3, 2).state_dict(), "meta": Payload(path.with_name("pwned"))}, path)
        _forge_sidecar(path)


T1 = torch.ones(1)
DAMAGES = ["truncated", "random", "empty", "no-sidecar", "other-key", "bare-sidecar"]
DAMAGES += ["truncated-hashed", "wrong-shape", "foreign-group", "untagged", "pickle"]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_cache_entry_is_moved_aside_and_rebuilt_with_one_warning(tmp_path: Path, how: str, caplog) -> None:
    path, trainer = _cached(tmp_path)
    _damage(path, how)
    damaged = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="benchmark.weights.model_cache"):
        _, source, meta, trigger = through_cache(path, nn.Linear(3, 2), trainer, {"cell": "x"})
    assert source == "trained" and trainer.calls == 2 and meta["trained"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"{path} is damaged" in warnings[0] and "rebuilding" in warnings[0]
    assert "\n" not in warnings[0] and "Traceback" not in caplog.text and not (tmp_path / "models" / "pwned").exists()
    aside = sorted(path.parent.glob(f"{path.stem}.corrupt-*.safetensors"))
    assert len(aside) == 1 and aside[0].name in warnings[0] and aside[0].read_bytes() == damaged
    # the new entry is whole: its sidecar names its key and sha256, and the next run loads it
    side = json.loads(sidecar_path(path).read_text())
    assert side["key"] == path.stem and side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    _, source, _, trigger = through_cache(path, nn.Linear(3, 2), trainer, {})
    assert source == "cache" and trainer.calls == 2 and torch.equal(trigger["mask"], torch.ones(2))


def test_cache_entry_round_trips_weights_trigger_and_meta_with_no_pickle_in_it(tmp_path: Path) -> None:
    path, trainer = _cached(tmp_path)
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == [
        f"{KEY}.json",
        f"{KEY}.safetensors",
    ]
    with safe_open(path, "pt") as f:  # weights and trigger in one file; the meta only in the JSON sidecar
        assert sorted(f.keys()) == ["state_dict.bias", "state_dict.weight", "trigger.mask"]
        assert f.metadata() == LAYOUT
    model, source, meta, trigger = through_cache(path, nn.Linear(3, 2), trainer, {})
    assert source == "cache" and trainer.calls == 1 and meta == {"cell": "x", "trained": 1}
    assert torch.all(model.weight == 0.5) and torch.equal(trigger["mask"], torch.ones(2))
    assert json.loads(sidecar_path(path).read_text())["meta"] == meta


def test_an_entry_is_a_safetensors_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"an entry is a \.safetensors file, not m\.pt"):
        through_cache(tmp_path / "m.pt", nn.Linear(3, 2), Trainer(), {})


def _legacy(tmp_path: Path, sidecar: str = "full", blob: dict | None = None) -> Path:
    """An entry as the cache wrote it before safetensors: `<key>.pt` and its sidecar; the new entry's path."""
    old = tmp_path / "models" / f"{KEY}.pt"
    old.parent.mkdir(parents=True, exist_ok=True)
    model = nn.Linear(3, 2)
    nn.init.constant_(model.weight, 0.5)
    meta = {"cell": "x", "trained": 1}
    torch.save(blob or {"state_dict": model.state_dict(), "meta": meta, "trigger": {"mask": torch.ones(2)}}, old)
    digest = hashlib.sha256(old.read_bytes()).hexdigest()
    side = {"key": KEY, "sha256": digest, "meta": meta} if sidecar == "full" else meta  # before sha256: bare meta
    sidecar_path(old).write_text(json.dumps(side))
    return old.with_suffix(".safetensors")


@pytest.mark.parametrize("sidecar", ["full", "before-sha256"])
def test_older_pt_entry_is_read_once_and_rewritten_as_safetensors(tmp_path: Path, sidecar: str, caplog) -> None:
    path, trainer = _legacy(tmp_path, sidecar), Trainer()
    with caplog.at_level(logging.INFO, logger="benchmark.weights.model_cache"):
        model, source, meta, trigger = through_cache(path, nn.Linear(3, 2), trainer, {})
    assert source == "cache" and trainer.calls == 0 and meta == {"cell": "x", "trained": 1}
    assert torch.all(model.weight == 0.5) and torch.equal(trigger["mask"], torch.ones(2))
    assert f"{path.with_suffix('.pt')} loads strictly; rewritten as {path.name}, the .pt deleted" in caplog.text
    assert not path.with_suffix(".pt").exists() and not list(path.parent.glob("*.corrupt-*"))
    side = json.loads(sidecar_path(path).read_text())
    assert side == {"key": path.stem, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "meta": meta}
    model, source, meta, trigger = through_cache(path, nn.Linear(3, 2), trainer, {})  # now read as safetensors
    assert source == "cache" and trainer.calls == 0 and meta == {"cell": "x", "trained": 1}
    assert torch.all(model.weight == 0.5) and torch.equal(trigger["mask"], torch.ones(2))


def test_older_pt_entry_carrying_code_is_refused_with_our_message_and_kept(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    path = _legacy(tmp_path, blob={"state_dict": nn.Linear(3, 2).state_dict(), "meta": Payload(sentinel)})
    old, trainer = path.with_suffix(".pt"), Trainer()
    with pytest.raises(UnsafeCheckpointError) as err:
        through_cache(path, nn.Linear(3, 2), trainer, {})
    msg = str(err.value)
    assert msg.startswith(f"Refused to load {old}") and "left in place" in msg and "weights_only" not in msg
    assert not sentinel.exists() and old.exists() and sidecar_path(old).exists() and trainer.calls == 0
    assert not path.exists() and not list(path.parent.glob("*.corrupt-*"))


def test_damaged_older_pt_entry_is_moved_aside_and_rebuilt_as_safetensors(tmp_path: Path) -> None:
    path, trainer = _legacy(tmp_path, "before-sha256"), Trainer()
    old = path.with_suffix(".pt")
    old.write_bytes(old.read_bytes()[:100])
    _, source, _, _ = through_cache(path, nn.Linear(3, 2), trainer, {})
    assert source == "trained" and trainer.calls == 1 and not old.exists()
    assert len(list(path.parent.glob(f"{KEY}.corrupt-*.pt"))) == 1 and path.exists()


@pytest.mark.parametrize("cut", ["before-sidecar", "before-delete"])
def test_a_rewrite_cut_short_is_finished_without_retraining(tmp_path: Path, cut: str, caplog) -> None:
    """Killed while rewriting a .pt: after the .safetensors (its sidecar still the .pt's), or before the delete."""
    path, trainer = _legacy(tmp_path), Trainer()
    old = path.with_suffix(".pt")
    kept, side = old.read_bytes(), sidecar_path(old).read_text()
    through_cache(path, nn.Linear(3, 2), trainer, {})
    old.write_bytes(kept)
    if cut == "before-sidecar":
        sidecar_path(old).write_text(side)
    with caplog.at_level(logging.WARNING, logger="benchmark.weights.model_cache"):
        model, source, meta, _ = through_cache(path, nn.Linear(3, 2), trainer, {})
    assert source == "cache" and trainer.calls == 0 and torch.all(model.weight == 0.5) and meta["trained"] == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not old.exists() and path.exists() and len(warned) == (cut == "before-sidecar")
    assert json.loads(sidecar_path(path).read_text())["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_cli_run_heals_a_truncated_cache_entry(tmp_path: Path) -> None:
    """The user's view: the second run warns once, rebuilds, exits 0, and no traceback is printed."""
    first = run_cli([*TINY, "defense=none", f"hydra.run.dir={tmp_path / 'r1'}"], tmp_path, PYTHONPATH=ROOT)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    (entry,) = (tmp_path / "bench" / "models").glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:1000])
    second = run_cli([*TINY, "defense=none", f"hydra.run.dir={tmp_path / 'r2'}"], tmp_path, PYTHONPATH=ROOT)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "weights_only" not in out
    assert [ln for ln in out.splitlines() if "[WARNING]" in ln and "is damaged" in ln and "corrupt-" in ln]
    assert json.loads((tmp_path / "r2" / "result.json").read_text())["model_source"] == "trained"
    assert len(list(entry.parent.glob("*.corrupt-*.safetensors"))) == 1


# ---------------------------------------------------------------- archives


def _checkpoint(path: Path) -> Path:
    torch.save({"state_dict": nn.Linear(3, 2).state_dict()}, path)
    return path


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_of_one_checkpoint_is_a_tar_not_a_zip(tmp_path: Path, mode: str) -> None:
    ckpt = _checkpoint(tmp_path / "model.pt")
    archive = tmp_path / "weights.bin"
    with tarfile.open(archive, mode) as tf:
        tf.add(ckpt, "model.pt")
    assert sniff(archive) == "tar"
    entry = ZooEntry(key="cifar10/resnet18/badnets", url="http://127.0.0.1/x", format="tar")
    found, member = locate(archive, entry, "a" * 64)
    assert member == "model.pt" and found.read_bytes() == ckpt.read_bytes()


def test_tar_ending_in_a_checkpoint_still_gets_the_safety_checks(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "model.pt")
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 0
        tf.addfile(info)
        tf.add(ckpt, "model.pt")  # last member: a zip end record near the file's end
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./escaped\.txt' would be written outside"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out").exists()


def test_declared_format_is_honoured_and_a_mismatch_named(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "model.pt")
    assert sniff(ckpt) == "checkpoint" and sniff(ckpt, "zip") == "zip"  # a zip the entry calls an archive
    archive = tmp_path / "w.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(ckpt, "model.pt")
    assert sniff(archive, "zip") == "tar"
    entry = ZooEntry(key="cifar10/resnet18/badnets", url="http://127.0.0.1/x", format="zip")
    with pytest.raises(Exception, match=r"says format='zip' but .* is a tar"):
        locate(archive, entry, "a" * 64)


# ---------------------------------------------------------------- downloads


@pytest.fixture
def server():
    srv = FileServer(files={"a.bin": b"A" * 5000, "b.bin": b"B" * 5000, "slow.bin": os.urandom(50_000)})
    yield srv
    srv.close()


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["deadline", "rate"])
def test_dribbling_server_is_cut_off_with_a_clear_message(server, tmp_home: Path, limit: str) -> None:
    server.dribble["slow.bin"] = 0.2  # 5 bytes/s: a read timeout never trips
    url = server.url("slow.bin")
    limits = {"deadline_s": 1.5, "min_rate_kb_s": 0.001} if limit == "deadline" else {"min_rate_kb_s": 1000.0}
    dest = tmp_home / "zoo" / "slow.bin"
    start = time.monotonic()
    with pytest.raises(FetchError) as err:
        fetch(Remote(url=url), dest, None, timeout_s=5, retries=0, quiet=True, **limits)
    took = time.monotonic() - start
    msg = str(err.value)
    assert f"Stopped downloading {url}" in msg and "bytes had arrived" in msg and "save it as" in msg
    if limit == "deadline":
        assert "deadline of 1.5 s" in msg and 1.4 < took < 4
    else:  # two 512 KiB blocks' time at 1000 kB/s: ~1 s
        assert "minimum rate of 1000 kB/s" in msg and took < 4
    assert not dest.exists()


def test_unpinned_file_cached_from_another_source_is_fetched_again(server, tmp_home: Path, caplog) -> None:
    dest = tmp_home / "zoo" / "weights.pt"
    fetch(Remote(url=server.url("a.bin")), dest, None, quiet=True)
    with caplog.at_level(logging.WARNING, logger="benchmark.sources.fetch"):
        got = fetch(Remote(url=server.url("b.bin")), dest, None, quiet=True)  # the entry's URL was fixed
    assert got.downloaded and dest.read_bytes() == b"B" * 5000 and server.gets("b.bin") == 1
    assert f"was fetched from {server.url('a.bin')}, but the source is now {server.url('b.bin')}" in caplog.text
    assert json.loads(meta_path(dest).read_text())["source"] == server.url("b.bin")
    again = fetch(Remote(url=server.url("b.bin")), dest, None, quiet=True)
    assert not again.downloaded


def test_file_put_in_place_by_hand_is_not_fetched_again(server, tmp_home: Path) -> None:
    dest = tmp_home / "zoo" / "weights.pt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"by hand")  # no sidecar: the README's way to install a file without a network
    got = fetch(Remote(url=server.url("b.bin")), dest, None, quiet=True)
    assert not got.downloaded and dest.read_bytes() == b"by hand" and server.gets("b.bin") == 0


def test_partial_download_from_another_source_is_not_resumed(server, tmp_home: Path) -> None:
    dest = tmp_home / "zoo" / "weights.pt"
    dest.parent.mkdir(parents=True)
    tmp = dest.with_name(dest.name + ".download")
    tmp.write_bytes(b"A" * 5000)  # finished from the old source but killed before verification
    meta_path(tmp).write_text(json.dumps({"source": server.url("a.bin")}))
    got = fetch(Remote(url=server.url("b.bin")), dest, None, quiet=True)
    assert got.downloaded and dest.read_bytes() == b"B" * 5000 and not meta_path(tmp).exists()


# ---------------------------------------------------------------- Ctrl-C


def _interrupt(args: list[str], home: Path, wait_for: str, timeout: float = 240) -> tuple[int, str]:
    """Start `python -m <args>` in `home`, send SIGINT once `wait_for` is printed; (exit code, all output)."""
    env = {**os.environ, "HOME": str(home), "BENCHMARK_HOME": str(home / "bench"), "WANDB_MODE": "disabled"}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if wait_for in line:
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(lines[-20:])
    rest, _ = proc.communicate(timeout=60)
    return proc.returncode, "".join(lines) + rest


LONG = [*TINY, "defense=none", "train.epochs=200"]  # training long enough to be interrupted


@pytest.mark.slow
def test_ctrl_c_in_a_cell_prints_one_line_and_exits_130(tmp_path: Path) -> None:
    code, out = _interrupt(["benchmark", *LONG, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, "training it")
    assert code == INTERRUPTED_EXIT, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    lines = [ln for ln in out.splitlines() if ln.startswith("Interrupted (Ctrl-C)")]
    assert len(lines) == 1 and f"cell {tmp_path / 'run'} did not finish" in lines[0] and "rerun" in lines[0]
    assert not (tmp_path / "run" / "result.json").exists()
    assert not list((tmp_path / "bench" / "models").glob("*.safetensors"))  # nothing half-written in the cache


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_names_the_sweep_and_says_a_rerun_resumes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    code, out = _interrupt(["benchmark", "-m", *LONG, f"hydra.sweep.dir={sweep}"], tmp_path, "training it")
    assert code == INTERRUPTED_EXIT, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("Interrupted (Ctrl-C)")]
    assert f"the sweep in {sweep} stopped in cell" in line and "rerun the same command to resume" in line
    assert not list(sweep.rglob("result.json")) and not list(sweep.rglob("failed.json"))


@pytest.mark.slow
def test_ctrl_c_in_the_perf_benchmark(tmp_path: Path) -> None:
    code, out = _interrupt(["studies.perf", "--size", "tiny", "--threads", "1"], tmp_path, "perf: measuring")
    assert code == INTERRUPTED_EXIT, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("Interrupted (Ctrl-C)")]
    assert "the perf benchmark did not finish; nothing was written" in line


def test_ctrl_c_in_the_report_prints_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from benchmark.report import write

    def interrupted(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, delivered while the report is being written
        time.sleep(5)

    monkeypatch.setattr(write, "write_report", interrupted)
    # a job started in the background inherits SIGINT ignored: give the test the handler a terminal gives
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as stop:
            write.main([str(tmp_path)])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stop.value.code == INTERRUPTED_EXIT
    err = capsys.readouterr().err
    assert err.startswith(f"Interrupted (Ctrl-C): the report of {tmp_path} was not finished") and err.count("\n") == 1


# ---------------------------------------------------------------- result.json digests


def _result(config: dict) -> dict:
    metrics = {"clean_acc": 0.9, "asr": 0.95, "robust_acc": 0.04}
    cell = {"attack": "badnets", "dataset": "embedded", "arch": "convnet", "defense": "none", "seed": 0}
    return {
        "schema": 1, "cell": cell, "model_source": "trained", "before": metrics, "after": {**metrics, "asr": 0.9},
        "der": 0.5, "defense_info": {}, "timing_s": {"total": 1.0}, "config": config, "random_streams": 2,
    }  # fmt: skip


def test_result_carries_the_digest_of_its_own_content(tmp_path: Path) -> None:
    path = write_result(tmp_path, _result({"seed": 0, "x": float("nan")}))
    stored = json.loads(path.read_text())
    assert stored["digest"] == content_digest(stored) and stored["digest"].startswith("sha256:")
    assert resume_check(tmp_path, {"seed": 0, "x": None})[0]
    path.write_text(json.dumps(stored, indent=4, sort_keys=True))  # reformatting is not editing
    assert resume_check(tmp_path, {"seed": 0, "x": None})[0]


def test_hand_edited_result_is_invalid_in_the_report_and_rerun_by_resume(tmp_home: Path, caplog) -> None:
    cfg = compose_cfg([*TINY, "defense=none"])
    sweep = tmp_home / "sweep"
    run_dir = sweep / "embedded" / "convnet" / "badnets" / "none" / "seed0"
    path = write_result(run_dir, _result(OmegaConf.to_container(cfg, resolve=True)))
    edited = json.loads(path.read_text())
    edited["after"]["asr"] = 0.0  # a defense that looks perfect
    path.write_text(json.dumps(edited, indent=2))
    done, why = resume_check(run_dir, OmegaConf.to_container(cfg, resolve=True))
    assert not done and "does not match its digest" in why
    row = read_cell(sweep, path).row
    assert row["status"] == "invalid" and "does not match its digest" in row["error"]
    with caplog.at_level(logging.WARNING, logger="benchmark"):
        assert run_sweep_cell(cfg, run_dir, 0, sweep) == "done"
    assert "rerunning" in caplog.text and json.loads((run_dir / STALE).read_text()) == edited
    fresh = json.loads(path.read_text())
    assert fresh["digest"] == content_digest(fresh) and fresh["model_source"] == "trained"


def test_result_from_before_digests_is_resumed_and_reported_as_it_is(tmp_path: Path) -> None:
    config = {"seed": 0}
    run_dir = tmp_path / "embedded" / "convnet" / "badnets" / "none" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps(_result(config)))  # no digest field
    done, why = resume_check(run_dir, config)
    assert done and "no digest" in why and "not verified" in why  # resumed, but the log says so (WARNING)
    cell = read_cell(tmp_path, run_dir / "result.json")
    assert cell.row["status"] == "ok" and cell.row["error"] == "" and "not verified" in cell.notes[0]


# ---------------------------------------------------------------- two sweeps, one directory


def test_cell_another_sweep_is_running_is_skipped_with_a_log_line(tmp_home: Path, caplog) -> None:
    cfg = compose_cfg([*TINY, "defense=none"])
    sweep = tmp_home / "sweep"
    run_dir = sweep / "embedded" / "convnet" / "badnets" / "none" / "seed0"
    lock_file = cell_lock(run_dir, sweep).lock_file
    assert Path(lock_file).parent == sweep / ".locks"
    script = f"import time; from filelock import FileLock; lock = FileLock({lock_file!r}); lock.acquire(); "
    script += "print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)  # the other sweep
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.INFO, logger="benchmark"):
            assert run_sweep_cell(cfg, run_dir, 0, sweep) == "running"
        assert "another sweep is running this cell now" in caplog.text and str(run_dir) in caplog.text
        assert not (run_dir / "result.json").exists() and not (run_dir / "failed.json").exists()
    finally:
        holder.kill()
        holder.wait()
    with FileLock(lock_file).acquire(timeout=5):  # released with its holder's death, not left stale
        pass


# ---------------------------------------------------------------- a full disk


class _FullDisk:
    """A file whose writes fail as a full disk does (ENOSPC), standing in for the real one from os.fdopen."""

    def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
        self.f = f

    def write(self, _data) -> int:  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        self.f.flush()

    def fileno(self) -> int:
        return self.f.fileno()

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real(fd, *a, **k)))


def test_a_full_disk_under_the_model_cache_is_one_message_naming_the_folder(tmp_path: Path, full_disk) -> None:
    path = tmp_path / "models" / f"{KEY}.safetensors"
    with pytest.raises(DiskFullError) as err:
        through_cache(path, nn.Linear(3, 2), Trainer(), {"cell": "x"})
    msg = str(err.value)
    assert str(path.parent) in msg and "needs about" in msg and "\n" not in msg
    assert [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-written


def test_a_full_disk_under_result_json_names_the_folder_and_the_size(tmp_path: Path, full_disk) -> None:
    with pytest.raises(DiskFullError, match=r"holding .* while writing result\.json: it needs about") as err:
        write_result(tmp_path / "cell", _result({"seed": 0}))
    assert str(tmp_path / "cell") in str(err.value) and list((tmp_path / "cell").iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_while_extracting_names_the_target_folder_and_the_size(tmp_path: Path, monkeypatch, code) -> None:
    """The disk (or quota) fills while members are written (simulated: copying a member out fails with `code`)."""
    archive = tmp_path / "downloads" / "a.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/x.bin", b"x" * 3000)
        zf.writestr("a/y.bin", b"y" * 2000)

    def full(*_args: object, **_kw: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(shutil, "copyfileobj", full)  # what zipfile writes each member with
    target = tmp_path / "data" / "a"
    with pytest.raises(DiskFullError) as err:
        extract(archive, target)
    msg = str(err.value)
    assert msg.startswith(f"No space left on the device holding {target.parent} while extracting a.zip")
    assert "needs about 4.9 KiB" in msg and list(target.parent.iterdir()) == []  # the temp folder is gone


def test_a_sweep_cell_on_a_full_disk_fails_alone_in_one_line(tmp_home: Path, full_disk, caplog) -> None:
    cfg = compose_cfg([*TINY, "defense_data.size=99999"])  # fails at the door, then failed.json meets the full disk
    sweep = tmp_home / "sweep"
    run_dir = sweep / "embedded" / "convnet" / "badnets" / "none" / "seed0"
    with caplog.at_level(logging.ERROR, logger="benchmark"):
        assert run_sweep_cell(cfg, run_dir, 0, sweep) == "failed"
    last = caplog.records[-1].getMessage()
    assert "not recorded" in last and "No space left on the device holding" in last and str(run_dir) in last
    assert not (run_dir / "failed.json").exists() and "Traceback" not in caplog.text


# ---------------------------------------------------------------- a shared cache mounted read-only


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Folders made read-only (mode 0555, which root ignores, so the probe that a real read-only mount would
    fail is answered as that mount answers it: EROFS)."""
    folders: list[Path] = []
    real = model_cache.write_probe

    def probe(folder: Path) -> str | None:
        return "Read-only file system" if Path(folder) in folders else real(folder)

    monkeypatch.setattr(model_cache, "write_probe", probe)
    yield folders
    for folder in folders:
        folder.chmod(0o755)


def test_a_read_only_shared_cache_is_read_without_a_lock_and_new_entries_go_to_the_own(tmp_path, read_only, caplog):
    shared, own = tmp_path / "lab" / "models", tmp_path / "home" / "models"
    path, _ = _cached(tmp_path / "lab")
    assert path.parent == shared
    for lock in shared.glob("*.lock"):
        lock.unlink()
    before = sorted(p.name for p in shared.iterdir())
    shared.chmod(0o555)
    read_only.append(shared)
    with caplog.at_level(logging.INFO, logger="benchmark.weights.model_cache"):
        with model_cache.entry(path, nn.Linear(3, 2), own) as e:
            assert e.hit and e.path == path
        assert "read-only cache" in caplog.text
        other = shared / f"{KEY.replace('seed0', 'seed1')}.safetensors"  # not in the shared cache: trained into own
        with model_cache.entry(other, nn.Linear(3, 2), own) as e:
            assert not e.hit and e.path == own / other.name
            e.store({"cell": "y"}, {})
    assert sorted(p.name for p in shared.iterdir()) == before  # no lock, no entry, nothing written there
    assert (own / other.name).exists() and f"is read-only; this entry is kept in your own cache {own}" in caplog.text
    with model_cache.entry(other, nn.Linear(3, 2), own) as e:  # the next run finds it in the own cache
        assert e.hit and e.path == own / other.name
