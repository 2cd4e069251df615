"""What a cell leaves behind: result.json (schema 1, see DESIGN.md) assembled and checked here, the curve CSV."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import torch

import benchmark
from benchmark.core.evaluate import Metrics, der
from benchmark.core.io import atomic_write_json, atomic_write_text
from benchmark.run.key import CELL_FIELDS
from benchmark.run.streams import STREAMS_VERSION

SCHEMA = 1


def versions() -> dict[str, str | None]:
    return {"benchmark": benchmark.__version__, "torch": torch.__version__, "git": git_revision()}


def git_revision() -> str | None:
    """The commit of the benchmark's own checkout (with '+dirty' for local changes), if it is one."""
    root = Path(benchmark.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def clean_floats(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v) for v in obj]
    return obj


MODEL_META_KEYS = ("train_seconds", "attack_prepare_seconds", "poisoned", "cover", "zoo", "runtime")
# Recorded only when present: a model read from `model.path` (its file, BackdoorBench's settings, its bd_test ASR).
PATH_META_KEYS = ("path", "backdoorbench", "bd_test")


def _rounded(m: Metrics) -> dict[str, float]:
    """Metrics to 6 decimals: a float32 fraction read as a float64 carries noise (0.8805000185966492)."""
    return {k: round(v, 6) for k, v in m.as_dict().items()}


def assemble_result(
    cell: dict[str, Any],
    model: tuple[str, dict[str, Any]],
    before: Metrics,
    after: Metrics,
    defense_info: dict[str, Any],
    curve_rows: list[dict[str, Any]],
    timing: dict[str, float],
    config: dict[str, Any],
    runtime: dict[str, Any],
) -> dict[str, Any]:
    """result.json's content, in its documented order; `model` is (source, the model's metadata)."""
    source, meta = model
    return {
        "schema": SCHEMA,
        "cell": cell,
        "model_source": source,
        "model_sha256": meta.get("sha256"),
        "weights_sha256": meta.get("weights_sha256"),
        "before": _rounded(before),
        "after": _rounded(after),
        "der": round(der(before, after), 6),
        "defense_info": {**defense_info, "curve": curve_rows} if curve_rows else defense_info,
        "timing_s": timing,
        "config": config,
        "versions": versions(),
        "random_streams": STREAMS_VERSION,
        "runtime": runtime,
        "model_meta": {
            **{k: meta.get(k) for k in MODEL_META_KEYS},
            **{k: meta[k] for k in PATH_META_KEYS if k in meta},
        },
    }


def content_digest(result: dict[str, Any]) -> str:
    """`sha256:<hex>` of the canonical JSON of everything in `result` but its `digest`.

    Stored in result.json so that resume and the report tell a file edited by hand (or torn) from the one
    the cell wrote. Canonical: sorted keys, no whitespace, so reformatting the file does not change it.
    """
    body = {k: v for k, v in result.items() if k != "digest"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    """result.json, atomically, with the digest of its own content (computed on its JSON form)."""
    path = Path(run_dir) / "result.json"
    body = json.loads(json.dumps(clean_floats({k: v for k, v in result.items() if k != "digest"})))
    atomic_write_json(path, {**body, "digest": content_digest(body)})
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


RESULT_KEYS = ("schema", "cell", "model_source", "before", "after", "der", "defense_info", "timing_s", "config")
METRIC_KEYS = ("clean_acc", "asr", "robust_acc")


def result_problems(result: Any) -> list[str]:
    """What keeps `result` from being a complete schema-1 result.json (empty when it is one).

    Resume trusts a cell only when this is empty, and the report lists any other file as invalid. A file
    with a `digest` must match it; one written before digests existed has none and is taken as it is.
    """
    if not isinstance(result, dict):
        return [f"expected a JSON object, got {type(result).__name__}"]
    if "digest" in result and result["digest"] != content_digest(result):
        return ["its content does not match its digest (edited by hand, or damaged)"]
    problems = [f"missing key {k!r}" for k in RESULT_KEYS if k not in result]
    if result.get("schema") != SCHEMA:
        problems.append(f"schema={result.get('schema')!r}, expected {SCHEMA}")
    cell = result.get("cell")
    if not isinstance(cell, dict) or any(k not in cell for k in CELL_FIELDS):
        problems.append(f"cell needs {', '.join(CELL_FIELDS)}")
    for phase in ("before", "after"):
        metrics = result.get(phase)
        if not isinstance(metrics, dict):
            problems.append(f"{phase} is not an object")
            continue
        for k in METRIC_KEYS:
            v = metrics.get(k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
                problems.append(f"{phase}.{k}={v!r} is not a fraction in [0, 1]")
    if not isinstance(result.get("timing_s"), dict) or "total" not in result["timing_s"]:
        problems.append("timing_s.total is missing")
    if "config" in result and not isinstance(result["config"], dict):
        problems.append("config is not an object")
    return problems


# Settings that do not change what a cell computes: a rerun that differs only in these still resumes.
IGNORED_KEYS = (
    "paths",
    "threads",
    "logger",
    "sweep_name",
    "resume",
    "reuse_learned",  # the same masks either way (the cache's key is their every input)
    "model.zoo_dir",
    "model.timeout_s",
    "model.deadline_s",
    "model.min_rate_kb_s",
    "model.retries",
)


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """`config` as result.json stores it (JSON round trip, NaN as null), minus the IGNORED_KEYS."""
    out = json.loads(json.dumps(clean_floats(config), default=str))
    for dotted in IGNORED_KEYS:
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in flatten(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: obj}


def config_changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys of the stored config whose value differs now, or that are gone (after `comparable`).

    Keys the config gained since the cell ran are not changes: a new setting arrives with a default that
    keeps the old behaviour (e.g. train.eval_every), and resume compares configs, not code.
    """
    a, b = flatten(comparable(stored)), flatten(comparable(current))
    return sorted(k for k in a if a[k] != b.get(k, "<absent>"))
