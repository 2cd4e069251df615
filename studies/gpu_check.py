"""GPU check: the path users take, on one GPU, offline, in minutes, summed up in one table.

    python -m studies.gpu_check [--out DIR] [--fashion-mnist DIR] [--no-perf] [OVERRIDE ...]

1. Writes a real-image stand-in in CIFAR-10's format (`cifar-10-batches-py`: 50,000 train / 10,000 test):
   Fashion-MNIST resized to 32x32 and replicated to 3 channels, from `--fashion-mnist`, else
   `$BENCHMARK_HOME/data/fashion_mnist`, else Debian's `dataset-fashion-mnist`. It lives under `--out`, never
   under the data root, so it cannot be taken for CIFAR-10.
2. Runs `python -m benchmark -m experiment=gpu_check` as a user would (the default `device=auto`): the paper
   cell's ResNet-18 trained for 15 epochs, then all 8 defenses on that model, one cell each.
3. Runs `python -m studies.perf` on the same device.
4. Prints one table (clean acc and ASR before and after, seconds per phase, img/s) and writes it to
   `<out>/gpu_check.md` with the machine, and everything as `<out>/gpu_check.json`.

`debug=default` among the overrides makes it a CPU smoke run of seconds (a small stand-in from the embedded
subset, tiny cells, `perf --size tiny`): the fast test suite runs it. Exit status: 0 when every cell finished
(and perf ran), else 1; a defense that lost more than `MAX_CLEAN_COST` clean accuracy is marked in the table,
not failed: RNP's cost on this stand-in is its method's (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from benchmark.core.data import ImageSet
from benchmark.core.io import atomic_write_json, atomic_write_text, honour_umask
from benchmark.sources.idx import idx_pair
from benchmark.sources.loaders import DEBIAN_FASHION_MNIST, EMBEDDED_DIR

DEFENSES = ("none", "rnp", "anp", "fp", "clp", "nad", "ft", "ibau")
MAX_CLEAN_COST = 0.10  # the bar the table marks: a defense that loses more clean accuracy on the stand-in
CIFAR_FOLDER = "cifar-10-batches-py"
IDX_PARTS = ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
TRAIN_BATCHES = 5  # CIFAR-10's training set comes as five batches (10,000 images each)


@dataclass(frozen=True)
class StandIn:
    """Where the stand-in's images came from and how many it holds."""

    source: Path
    train: int
    test: int


def find_fashion_mnist(given: Path | None, debug: bool) -> Path:
    """The folder holding Fashion-MNIST's four IDX files (the embedded subset in debug runs)."""
    if debug:
        return EMBEDDED_DIR
    home = Path(os.environ.get("BENCHMARK_HOME", Path.home() / ".cache" / "backdoor-benchmark"))
    candidates = [given] if given else [home / "data" / "fashion_mnist", DEBIAN_FASHION_MNIST]
    for folder in candidates:
        if folder is not None and all(any(folder.glob(f"{part}-ubyte*")) for part in IDX_PARTS):
            return folder  # decoded once, by write_standin, and only when the stand-in is not there yet
    looked = ", ".join(str(c) for c in candidates)
    raise SystemExit(
        f"error: Fashion-MNIST's IDX files (train/t10k images and labels) were not found in {looked}. "
        "Install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or copy the four "
        "*-ubyte.gz files into one of those folders, or name the folder with --fashion-mnist DIR."
    )


def cifar_rows(images: ImageSet) -> np.ndarray:
    """(N, 1, 28, 28) grey -> (N, 3072) uint8 rows as CIFAR stores them: 32x32, R plane, then G, then B."""
    x = images.x.float()
    if x.shape[-1] != 32:
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    return np.ascontiguousarray(x.reshape(len(x), 3 * 32 * 32).numpy())


def _dump(path: Path, batch: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)  # the published batches are protocol-2 pickles too


def write_standin(source: Path, root: Path, n_train: int, n_test: int) -> StandIn:
    """`root/cifar-10-batches-py` from the Fashion-MNIST IDX files in `source`; reused when already complete.

    Written into a temporary folder and renamed into place, so an interrupted run leaves no half a data set.
    """
    target = root / CIFAR_FOLDER
    marker = target / "STANDIN.json"
    if marker.exists():
        made = json.loads(marker.read_text())
        if made.get("source") == str(source) and made.get("train") == n_train and made.get("test") == n_test:
            return StandIn(source, n_train, n_test)
    train, test = idx_pair(source, "train"), idx_pair(source, "t10k")
    assert train is not None and test is not None  # find_fashion_mnist checked
    if len(train.y) < n_train or len(test.y) < n_test:
        have = f"{len(train.y)} / {len(test.y)}"
        raise SystemExit(f"error: {source} holds {have} train / test images, fewer than {n_train} / {n_test}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{CIFAR_FOLDER}."))
    try:
        rows, labels = cifar_rows(ImageSet(train.x[:n_train], train.y[:n_train])), train.y[:n_train].tolist()
        per = -(-n_train // TRAIN_BATCHES)
        for b in range(TRAIN_BATCHES):
            part = slice(b * per, (b + 1) * per)
            _dump(tmp / f"data_batch_{b + 1}", {"data": rows[part], "labels": labels[part]})
        test_rows = cifar_rows(ImageSet(test.x[:n_test], test.y[:n_test]))
        _dump(tmp / "test_batch", {"data": test_rows, "labels": test.y[:n_test].tolist()})
        _dump(tmp / "batches.meta", {"label_names": [f"fashion{i}" for i in range(10)], "num_vis": 3072})
        what = {"standin_for": "CIFAR-10 (format only)", "source": str(source), "train": n_train, "test": n_test}
        (tmp / "STANDIN.json").write_text(json.dumps(what, indent=2) + "\n")
        honour_umask(tmp)  # mkdtemp makes it private; the data set is not
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return StandIn(source, n_train, n_test)


def run_logged(cmd: list[str], log_path: Path, stdout: bool = True) -> tuple[int, float]:
    """Run `cmd` with its output shown as it comes and kept in `log_path`; returns (status, seconds).

    `stdout=False` drops the command's standard output (perf's JSON, which it also writes to a file).
    """
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    pipes = (subprocess.PIPE, subprocess.STDOUT) if stdout else (subprocess.DEVNULL, subprocess.PIPE)
    with open(log_path, "w") as log, subprocess.Popen(cmd, stdout=pipes[0], stderr=pipes[1], text=True) as proc:
        stream = proc.stdout if stdout else proc.stderr
        assert stream is not None
        for line in stream:
            log.write(line)
            sys.stdout.write(line)
            sys.stdout.flush()
    return proc.returncode, time.perf_counter() - start


def collect(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Each defense's result.json (or failed.json) in the sweep folder, by defense name."""
    cells: dict[str, dict[str, Any]] = {}
    for name in ("failed.json", "result.json"):  # a finished result wins over an older failure
        for path in sorted(sweep_dir.rglob(name)):
            record = json.loads(path.read_text())
            defense = (record.get("cell") or {}).get("defense") or path.parent.parent.name
            cells[str(defense)] = record
    return cells


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def cell_row(defense: str, record: dict[str, Any] | None) -> dict[str, Any]:
    """One table row: the metrics before and after, the clean-accuracy cost and the seconds per phase."""
    if record is None:
        return {"defense": defense, "status": "missing"}
    if record.get("status") == "failed":
        return {"defense": defense, "status": "failed", "error": record.get("error", "")}
    before, after, t = record["before"], record["after"], record["timing_s"]
    trained = record.get("model_source") == "trained"
    return {
        "defense": defense,
        "status": "done",
        "clean_before": before["clean_acc"],
        "clean_after": after["clean_acc"],
        "asr_before": before["asr"],
        "asr_after": after["asr"],
        "clean_cost": round(before["clean_acc"] - after["clean_acc"], 4),
        "model_source": record.get("model_source"),
        "train_s": (record.get("model_meta") or {}).get("train_seconds") if trained else None,
        "defense_s": t.get("defense"),
        "curve_s": t.get("curve"),
        "evaluate_s": t.get("evaluate"),
        "data_s": t.get("data"),
        "total_s": t.get("total"),
    }


def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The cells as a Markdown table; a row over the clean-accuracy bar is marked."""
    head = (
        "| defense | clean acc before -> after | cost | ASR before -> after | defense s | curve s | evaluate s "
        "| data s | cell s |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        if r["status"] != "done":
            lines.append(f"| {r['defense']} | {r['status'].upper()} {r.get('error', '')[:80]} | | | | | | | |")
            continue
        mark = " **(> bar)**" if r["clean_cost"] > MAX_CLEAN_COST else ""
        lines.append(
            f"| {r['defense']} | {_pct(r['clean_before'])} -> {_pct(r['clean_after'])} | {r['clean_cost']:+.3f}{mark} "
            f"| {_pct(r['asr_before'])} -> {_pct(r['asr_after'])} | {_s(r['defense_s'])} | {_s(r['curve_s'])} "
            f"| {_s(r['evaluate_s'])} | {_s(r['data_s'])} | {_s(r['total_s'])} |"
        )
    return "\n".join(lines)


def gpu_driver() -> str | None:
    """The NVIDIA driver's version, from nvidia-smi when it is there (torch does not report it)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def machine(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the numbers were measured on: GPU, driver, torch, CUDA, CPU, precision."""
    any_record = next((r for r in records.values() if r.get("status") != "failed"), {})
    return {
        "runtime": any_record.get("runtime"),
        "versions": any_record.get("versions"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": gpu_driver(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def perf_lines(perf: dict[str, Any]) -> list[str]:
    """The perf benchmark's headline figures, one line each."""
    f = perf["figures"]
    return [
        f"- backdoor training (ResNet-18, 32x32, batch {perf['workload']['train_batch']}): "
        f"{f['train']['images_per_s']:,.0f} img/s ({f['train']['seconds_per_epoch']:.2f} s per epoch)",
        f"- evaluation (batch {f['eval']['batch_size']}): {f['eval']['images_per_s']:,.0f} img/s",
        f"- RNP cell: {f['rnp']['seconds']:.1f} s (defense {f['rnp']['defense_s']:.1f} "
        f"+ curve {f['rnp']['curve_s']:.1f})",
        f"- ANP cell: {f['anp']['seconds']:.1f} s ({f['anp']['iterations']} iterations, "
        f"{1000 * f['anp']['defense_s_per_iteration']:.1f} ms each)",
        f"- reference re-creation / ours (RNP): {f['ratio_reference_over_ours']:.1f}x",
        f"- peak memory: {f['peak_memory']['cell_peak_mb']:,.0f} MB ({f['peak_memory']['kind']})",
    ]


def report(rows: list[dict[str, Any]], info: dict[str, Any], perf: dict[str, Any] | None, extra: dict) -> str:
    """The whole summary as Markdown: machine, the table, training, perf, the verdict."""
    rt, v = info.get("runtime") or {}, info.get("versions") or {}
    gpu = info.get("gpu") or rt.get("device", "?")
    lines = [
        "# GPU check",
        "",
        f"Machine: {gpu}; driver {info.get('driver') or 'n/a'}; torch {info['torch']} (CUDA {info['cuda']}); "
        f"CPU {rt.get('cpu', '?')}; precision {rt.get('precision', '?')}; project {v.get('git', '?')}.",
        f"Data: {extra['standin']}. Sweep: `{extra['sweep_cmd']}` "
        f"({extra['sweep_s']:.0f} s wall, exit {extra['sweep_rc']}).",
        "",
        table(rows),
        "",
    ]
    trained = next((r for r in rows if r.get("train_s")), None)
    if trained is not None:
        n, epochs = extra["train_images"], extra["epochs"]
        lines.append(
            f"Backdoor training (in the `{trained['defense']}` cell): {epochs} epochs x {n:,} images in "
            f"{trained['train_s']:.1f} s ({n * epochs / trained['train_s']:,.0f} img/s, data augmentation and "
            "poisoning included)."
        )
    if perf is not None:
        lines += ["", f"`python -m studies.perf` ({extra['perf_s']:.0f} s wall):", *perf_lines(perf)]
    over = [r["defense"] for r in rows if r["status"] == "done" and r["clean_cost"] > MAX_CLEAN_COST]
    bad = [r["defense"] for r in rows if r["status"] != "done"]
    lines += [
        "",
        f"Cells finished: {sum(r['status'] == 'done' for r in rows)} of {len(rows)}"
        + (f" (not finished: {', '.join(bad)})" if bad else "")
        + f". Clean-accuracy cost over {MAX_CLEAN_COST}: {', '.join(over) if over else 'none'}.",
        "How to read it: cost = clean acc before - after; ASR is the attack success rate on triggered non-target "
        "test images; the timings are wall seconds of each phase of a cell (`timing_s` in its result.json).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m studies.gpu_check",
        description="The paper cell on one GPU, offline: stand-in data, 15-epoch ResNet-18, 8 defenses, perf.",
        epilog="Other arguments are Hydra overrides for the sweep (e.g. debug=default for a CPU smoke run).",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"), help="folder for everything it writes")
    parser.add_argument("--fashion-mnist", type=Path, help="folder with Fashion-MNIST's four IDX files")
    parser.add_argument("--no-perf", action="store_true", help="skip `python -m studies.perf`")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    debug = any(o.startswith("debug=") and o != "debug=null" for o in overrides)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    n_train, n_test = (2_500, 1_000) if debug else (50_000, 10_000)
    standin = write_standin(find_fashion_mnist(args.fashion_mnist, debug), out / "data" / "cifar10", n_train, n_test)
    sweep_dir = out / "sweep"
    forced = [f"paths.data={out / 'data'}", f"paths.cache={out / 'models'}", f"hydra.sweep.dir={sweep_dir}"]
    if debug:  # the debug preset swaps in the embedded data; the check is about the stand-in's path
        forced += ["dataset=cifar10", "dataset.download=false"]
    sweep_cmd = [sys.executable, "-m", "benchmark", "-m", "experiment=gpu_check", *overrides, *forced]
    sweep_rc, sweep_s = run_logged(sweep_cmd, out / "sweep.log")
    perf, perf_s = None, 0.0
    if not args.no_perf:
        (out / "perf.json").unlink(missing_ok=True)
        perf_cmd = [sys.executable, "-m", "studies.perf", "--out", str(out / "perf.json")]
        perf_cmd += ["--size", "tiny", "--device", "cpu", "--threads", "1"] if debug else []
        perf_rc, perf_s = run_logged(perf_cmd, out / "perf.log", stdout=False)
        perf = json.loads((out / "perf.json").read_text()) if perf_rc == 0 else None
    records = collect(sweep_dir)
    rows = [cell_row(d, records.get(d)) for d in DEFENSES]
    cfg = next((r["config"] for r in records.values() if r.get("config")), {})
    reserve, limit = (cfg.get("dataset") or {}).get("reserve", 0), (cfg.get("dataset") or {}).get("train_limit")
    extra = {
        "standin": f"Fashion-MNIST from {standin.source}, 32x32x3, {standin.train:,} train / {standin.test:,} test "
        "in CIFAR-10's format",
        "sweep_cmd": " ".join(["python -m benchmark -m experiment=gpu_check", *overrides]),
        "sweep_s": sweep_s,
        "sweep_rc": sweep_rc,
        "perf_s": perf_s,
        "train_images": min(standin.train - reserve, limit or standin.train),
        "epochs": (cfg.get("train") or {}).get("epochs", 0),
    }
    info = machine(records)
    text = report(rows, info, perf, extra)
    atomic_write_text(out / "gpu_check.md", text)
    atomic_write_json(out / "gpu_check.json", {"rows": rows, "machine": info, "perf": perf, **extra})
    print(text, flush=True)
    finished = sweep_rc == 0 and all(r["status"] == "done" for r in rows) and (args.no_perf or perf is not None)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
