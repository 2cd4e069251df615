"""The installed harness works without the checkout: the wheel carries the code, the configs (as
`benchmark.conf`), the embedded data, the studies with their presets and perf targets, and runs the quickstart
from anywhere."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
CODE = ("benchmark", "attacks", "defenses", "studies", "hydra_plugins")
# A quickstart cell shrunk to well under a minute (same code path, smaller data, net and defense).
SMALL = [
    "experiment=quickstart",
    "train.epochs=1",
    "dataset.train_limit=1000",
    "dataset.test_limit=300",
    "arch.kwargs.width=8",
    "defense_data.size=100",
    "defense.unlearn_epochs=2",
    "defense.recover_epochs=2",
    "threads=2",
]


def code_packages() -> set[str]:
    return {
        ".".join(d.relative_to(ROOT).parts)
        for top in CODE
        for d in [ROOT / top, *(ROOT / top).rglob("*")]
        if (d / "__init__.py").is_file() and "__pycache__" not in d.parts
    }


def test_every_code_package_and_the_configs_are_listed() -> None:
    """pyproject lists packages by hand (to map conf/ to benchmark.conf): a new subpackage must join the list."""
    assert set(SETUPTOOLS["packages"]) == code_packages() | {"benchmark.conf"}
    assert SETUPTOOLS["package-dir"] == {"benchmark.conf": "conf"}


def test_package_data_covers_every_config_and_data_file() -> None:
    data = SETUPTOOLS["package-data"]
    assert {p.suffix for p in (ROOT / "conf").rglob("*") if p.is_file()} == {".yaml"}  # all match **/*.yaml
    assert "**/*.yaml" in data["benchmark.conf"] and "*.yaml" in data["benchmark.conf"]
    assert "fashion_mnist_subset/*.gz" in data["benchmark.sources"]
    assert {p.suffix for p in (ROOT / "benchmark/report/templates").iterdir()} == {".j2"}  # all match templates/*.j2
    assert "templates/*.j2" in data["benchmark.report"]
    studies_conf = {p.name if p.suffix == ".py" else p.suffix for p in (ROOT / "studies/conf").rglob("*.*")}
    studies_conf -= {".pyc"}  # __pycache__
    assert studies_conf == {".yaml", "__init__.py"} and "**/*.yaml" in data["studies.conf"]
    assert "targets.yaml" in data["studies.perf"]


def build_wheel(out: Path) -> Path:
    """Build from a copy: setuptools leaves build/ and *.egg-info beside the sources."""
    skip = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "outputs", "multirun", "wandb", "*.egg-info")
    src = shutil.copytree(ROOT, out.parent / "src", ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return wheel


def packaged_files() -> set[str]:
    """What the wheel must hold besides code: every config (the studies' too), the embedded data, the perf targets,
    the page template."""
    confs = {f"benchmark/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    studies = {p.relative_to(ROOT).as_posix() for p in (ROOT / "studies" / "conf").rglob("*.yaml")}
    data = {p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmark/sources/fashion_mnist_subset").glob("*.gz")}
    return confs | studies | data | {"studies/perf/targets.yaml", "benchmark/report/templates/report.html.j2"}


@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_quickstart_outside_the_checkout(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert packaged_files() <= names
    assert {"benchmark/conf/hydra/launcher/slurm.yaml", "benchmark/conf/experiment/quickstart.yaml"} <= names
    # A fresh venv with the wheel installed (not editable). Its dependencies are this interpreter's (a
    # .pth line, which adds the folder but not its editable-install hooks); CI installs them from scratch.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=600)
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    (Path(purelib) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(work), BENCHMARK_HOME=str(work / "home"), WANDB_MODE="disabled")
    where = subprocess.run(
        [py, "-c", "import benchmark; print(benchmark.__file__, benchmark.CONF_DIR)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(purelib) and "benchmark/conf" in where  # the installed copy, its packaged configs
    proc = subprocess.run(
        [env_dir / "bin" / "benchmark", *SMALL, "hydra.run.dir=run"],
        cwd=work, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((work / "run" / "result.json").read_text())
    assert result["cell"]["dataset"] == "embedded" and result["model_source"] == "trained"
