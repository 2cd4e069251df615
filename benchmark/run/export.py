"""Export a backdoored model as a zoo checkpoint plus a ready registry entry.

    python -m benchmark.export experiment=quickstart export.dir=zoo export.url=https://lab.example/zoo

The cell's model comes from the model cache, else it is trained; it is evaluated (clean acc, ASR on the
test split) and written as `<dataset>-<arch>-<attack>-seed<seed>.safetensors` — the weights as
`state_dict.<name>` tensors and the learned trigger as `trigger.<name>` tensors, a file that cannot carry
code — with `<same>.json` (`{"key", "file", "sha256", "meta"}`: the metadata, as JSON) and `<same>.zoo.yaml`,
an entry to paste into a registry (`model.zoo_files`). Host the .safetensors at `export.url` and any harness
can take its model from there. With `logger=wandb` (and `export.artifact=true`) the files are also logged as
a wandb model artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from benchmark.core.errors import BenchmarkError
from benchmark.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from benchmark.run.record import versions
from benchmark.run.runtime import CONF_DIR, start_runtime
from benchmark.weights.checkpoint import encode_safetensors

if TYPE_CHECKING:
    from benchmark.run.config import RunConfig

log = logging.getLogger("benchmark.export")


@dataclass(frozen=True)
class ExportSettings:
    """The `export:` section: where to write, the URL the files will be served from, wandb artifact or not."""

    dir: str = "exports"
    url: str | None = None
    artifact: bool = True


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the weights, their JSON sidecar and the registry entry (also as a dict)."""

    checkpoint: Path
    sidecar: Path
    entry_file: Path
    key: str
    entry: dict[str, Any]


def _plain(obj: Any) -> Any:
    """JSON-safe copy (tuples -> lists), so the entry dumps as plain YAML."""
    return json.loads(json.dumps(obj, default=str))


def build_entry(parts: RunConfig, metrics: dict[str, float], file: str, digest: str, url: str | None) -> dict[str, Any]:
    """The registry entry for an exported checkpoint: where it lives, its hash and what it was trained with."""
    c, ds = parts.cell, parts.dataset
    v = versions()
    return {
        "description": (
            f"{c['attack']} on {c['dataset']}, {c['arch']}, seed {c['seed']}; exported by backdoor-benchmark "
            f"{v['benchmark']} (git {v['git']})"
        ),
        "url": f"{url.rstrip('/')}/{file}" if url else None,
        "file": file,
        "sha256": digest,
        "format": "safetensors",
        "member": None,
        "state_dict_key": "state_dict",
        "strip_prefix": [],
        "rename": {},
        "arch_kwargs": _plain(parts.arch.kwargs),
        "input": {"size": ds.size, "num_classes": ds.num_classes, "mean": list(ds.mean), "std": list(ds.std)},
        "attack": _plain(asdict(parts.attack)),
        "reported": {k: round(v, 6) for k, v in metrics.items()},
        "trained_with": {
            "train": _plain(asdict(parts.recipe)),
            "dataset": {k: getattr(ds, k) for k in ("train_limit", "reserve", "split_seed", "test_limit")},
            "seed": c["seed"],
        },
        "notes": "reported: measured by the harness on the test split when exported",
    }


def export_config(cfg: DictConfig) -> tuple[RunConfig, ExportSettings]:
    """The cell's typed run config and the `export:` settings, checked once at the entry."""
    from benchmark.run.config import build_run_config, typed_section

    return build_run_config(cfg), typed_section(ExportSettings, cfg.export, "export")


def export_cell(parts: RunConfig, settings: ExportSettings, device: torch.device) -> Exported:
    """Obtain (cache or train), evaluate and write the cell's backdoored model and its registry entry."""
    from attacks.poison import triggered_test
    from benchmark.core.evaluate import evaluate
    from benchmark.run.cell import prepare_data
    from benchmark.run.model import obtain_model

    parts.model = dataclasses.replace(parts.model, source="train")  # export our own model, never a zoo one
    data = prepare_data(parts, device)
    obtained = obtain_model(parts, data, device)
    model, source = obtained.model, obtained.source
    triggered = triggered_test(data.splits.test, parts.attack, parts.dataset.num_classes)
    metrics = evaluate(model, data.splits.test, triggered, parts.eval.batch_size, parts.precision).as_dict()
    c = parts.cell
    key = f"{c['dataset']}/{c['arch']}/{c['attack']}"
    name = f"{c['dataset']}-{c['arch']}-{c['attack']}-seed{c['seed']}"
    out = Path(settings.dir).expanduser()
    ckpt, sidecar = out / f"{name}.safetensors", out / f"{name}.json"
    net = getattr(model, "net", model)
    data = encode_safetensors({"state_dict": net.state_dict(), "trigger": parts.attack.trigger_state()})
    digest = hashlib.sha256(data).hexdigest()
    meta = _plain({"key": key, "cell": c, "model_source": source, **metrics, "versions": versions()})
    atomic_write_bytes(ckpt, data)
    atomic_write_json(sidecar, {"key": key, "file": ckpt.name, "sha256": digest, "meta": meta})
    for served in (ckpt, sidecar):  # to be served by a web server: readable by others, whatever the umask
        served.chmod(0o644)
    entry = build_entry(parts, metrics, ckpt.name, digest, settings.url)
    header = f"# Zoo entry for {ckpt.name}; paste into a registry file (model.zoo_files=[...]).\n"
    if entry["url"] is None:
        header += f"# Set `url` to where you host {ckpt.name} (or `gdrive: <file id>` instead of url).\n"
    entry_file = out / f"{name}.zoo.yaml"
    atomic_write_text(entry_file, header + yaml.safe_dump({key: entry}, sort_keys=False, width=110))
    log.info("exported %s (sha256 %s, clean acc %.4f, ASR %.4f)", ckpt, digest, metrics["clean_acc"], metrics["asr"])
    log.info("registry entry: %s", entry_file)
    return Exported(ckpt, sidecar, entry_file, key, entry)


def log_artifact(parts: RunConfig, settings: ExportSettings, run_dir: Path, exported: Exported) -> None:
    """With logger=wandb: log the checkpoint, its sidecar and its entry as a wandb model artifact."""
    from benchmark.run.loggers import WandbLogger, make_logger

    if parts.logger.kind != "wandb" or not settings.artifact:
        return
    import wandb

    logger = make_logger(parts.logger, run_dir, exported.checkpoint.stem, parts.resolved, job_type="export")
    try:
        assert isinstance(logger, WandbLogger)
        artifact = wandb.Artifact(exported.checkpoint.stem, type="model", metadata=exported.entry)
        for file in (exported.checkpoint, exported.sidecar, exported.entry_file):
            artifact.add_file(str(file))
        logger.run.log_artifact(artifact)
        log.info("wandb: logged model artifact %s", exported.checkpoint.stem)
    finally:
        logger.finish()


@hydra.main(config_path=CONF_DIR, config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        parts, settings = export_config(cfg)  # typed and checked once, here at the door
        log_artifact(parts, settings, run_dir, export_cell(parts, settings, start_runtime(parts)))
    except BenchmarkError as exc:
        log.error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
