"""How long a whole grid takes, projected from a sweep that measured some of its cells on the same machine.

    python -m studies.perf.project outputs/multirun/NAME [--experiment rnp_cifar10] [--seeds 0,1,2]

The sweep's `results.csv` (written by its report) gives each backdoored model's seconds (training plus the
attack's preparation: paid once per attack and seed) and each cell's own seconds without them. The grid of
`--experiment` (its `hydra.sweeper.params`: attacks, defenses, seeds) is then priced cell by cell: a pair that
was measured at its median, a pair that was not at the median of the same defense on the attacks that were
(said, with how many), and an attack or defense never measured is listed as unpriced, so that the total is a
lower bound rather than a guess. Measure on the machine you plan for (one GPU at the paper's settings): a
CPU run prices a CPU grid.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import OmegaConf

from attacks.base import Attack
from benchmark import CONF_DIR


@dataclass(frozen=True)
class Grid:
    """The cells of a sweep preset: every attack x defense x seed; one backdoored model per attack and seed."""

    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    seeds: tuple[str, ...]
    setting: tuple[str, str] = ("", "")  # (dataset, arch) the preset selects


@dataclass
class Projection:
    """Seconds for the grid, by part, and what could not be priced."""

    models_s: float = 0.0
    cells_s: dict[str, float] = field(default_factory=dict)  # defense -> seconds over attacks and seeds
    estimated: list[str] = field(default_factory=list)  # models and cells priced from other measured ones
    unpriced: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.models_s + sum(self.cells_s.values())


def _values(text: object) -> tuple[str, ...]:
    return tuple(v.strip() for v in str(text).split(",") if v.strip())


def grid_of(experiment: str, conf_dir: Path = Path(CONF_DIR)) -> Grid:
    """The attack x defense x seed grid a preset sweeps (conf/experiment/<name>.yaml, hydra.sweeper.params)."""
    path = conf_dir / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "experiment").glob("*.yaml"))
        raise SystemExit(f"--experiment {experiment!r} is not a preset in {conf_dir / 'experiment'}: choose {known}")
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(cfg, dict)
    params = (cfg.get("hydra") or {}).get("sweeper", {}).get("params") or {}
    missing = [k for k in ("attack", "defense", "seed") if k not in params]
    if missing:
        raise SystemExit(f"--experiment {experiment!r} sweeps no {', '.join(missing)} (hydra.sweeper.params): no grid")
    picks = {
        str(k).removeprefix("override /"): str(v)
        for d in cfg.get("defaults", [])
        if isinstance(d, dict)
        for k, v in d.items()
    }
    setting = (picks.get("dataset", ""), picks.get("arch", ""))
    return Grid(_values(params["attack"]), _values(params["defense"]), _values(params["seed"]), setting)


def _seconds(row: dict[str, str], key: str) -> float | None:
    try:
        return float(row[key])
    except (KeyError, ValueError):
        return None


@dataclass
class Measured:
    """Medians over a sweep's finished cells: per attack's model (training + preparation, and training alone)
    and per (attack, defense) cell without the model's training."""

    models: dict[str, float]
    training: dict[str, float]
    cells: dict[tuple[str, str], float]


def measured(rows: Sequence[dict[str, str]]) -> Measured:
    """The medians, each model counted once per attack and seed (every cell of it repeats its seconds)."""
    models: dict[str, list[float]] = {}
    training: dict[str, list[float]] = {}
    cells: dict[tuple[str, str], list[float]] = {}
    seen: set[tuple[str, str]] = set()
    for row in rows:
        if row.get("status") != "ok":
            continue
        model_s, train_s, cell_s = (_seconds(row, k) for k in ("backdoor_seconds", "train_seconds", "seconds_cell"))
        if model_s is not None and (row["attack"], row["seed"]) not in seen:
            seen.add((row["attack"], row["seed"]))
            models.setdefault(row["attack"], []).append(model_s)
            training.setdefault(row["attack"], []).append(model_s if train_s is None else train_s)
        if cell_s is not None:
            cells.setdefault((row["attack"], row["defense"]), []).append(cell_s)
    med = statistics.median
    return Measured(
        {a: med(v) for a, v in models.items()},
        {a: med(v) for a, v in training.items()},
        {k: med(v) for k, v in cells.items()},
    )


def settings_of(rows: Sequence[dict[str, str]]) -> set[tuple[str, str]]:
    return {(r.get("dataset", ""), r.get("arch", "")) for r in rows if r.get("status") == "ok"}


def project(grid: Grid, m: Measured) -> Projection:
    """Price every model and cell of `grid` from the medians; estimates and gaps are listed, never hidden."""
    out, n = Projection(), len(grid.seeds)
    all_training = list(m.training.values())
    for attack in grid.attacks:
        if attack in m.models:
            out.models_s += n * m.models[attack]
        elif all_training:
            out.models_s += n * statistics.median(all_training)
            out.estimated.append(
                f"model {attack}: the median training of {len(all_training)} measured attacks "
                "(its own preparation unmeasured)"
            )
        else:
            out.unpriced.append(f"model {attack}: no training measured")
    for defense in grid.defenses:
        same = [s for (a, d), s in m.cells.items() if d == defense]
        out.cells_s[defense] = 0.0
        guessed = [a for a in grid.attacks if (a, defense) not in m.cells]
        for attack in grid.attacks:
            if (attack, defense) in m.cells:
                out.cells_s[defense] += n * m.cells[attack, defense]
            elif same:
                out.cells_s[defense] += n * statistics.median(same)
        if guessed and same:
            out.estimated.append(
                f"{defense}: {len(guessed)} of {len(grid.attacks)} attacks at the median of the "
                f"{len(same)} measured ({', '.join(guessed)})"
            )
        elif guessed:
            out.unpriced.append(f"{defense}: never measured")
    return out


def from_perf(grid: Grid, figures: dict[str, Any], epochs: int, train_images: int, eval_images: int) -> Projection:
    """Price `grid` from one perf run's figures (studies.perf.bench): a model = `epochs` epochs of
    `train_images` at the measured training rate; a cell = its defense's measured seconds (curve included)
    plus the before and after evaluation of `eval_images` at the measured evaluation rate. Attack
    preparation (trigger generators, adversarial perturbations, the clean model some attacks start from)
    is not in a perf run: listed as unpriced, so the total is a lower bound."""
    out, per_pair = Projection(), len(grid.attacks) * len(grid.seeds)
    out.models_s = per_pair * epochs * train_images / figures["train"]["images_per_s"]
    evaluation = 2 * eval_images / figures["eval"]["images_per_s"]
    measured = {**figures.get("defenses", {}), **{d: figures[d] for d in ("rnp", "anp") if d in figures}}
    for defense in grid.defenses:
        if defense == "none":
            out.cells_s[defense] = per_pair * evaluation
        elif defense in measured:
            out.cells_s[defense] = per_pair * (measured[defense]["seconds"] + evaluation)
        else:
            out.unpriced.append(f"{defense}: not measured by the perf run")
    prepared = [a for a in grid.attacks if prepares(a)]
    if prepared:
        out.unpriced.append(f"attack preparation ({', '.join(prepared)}): not measured by the perf run")
    return out


def prepares(attack: str, conf_dir: Path = Path(CONF_DIR)) -> bool:
    """Whether the attack does work before its poisoned training (a trigger generator, adversarial
    perturbations, a clean model to start from): its class overrides `Attack.prepare`."""
    target = OmegaConf.load(conf_dir / "attack" / f"{attack}.yaml").get("_target_")
    return target is not None and get_class(str(target)).prepare is not Attack.prepare


def render(grid: Grid, p: Projection, experiment: str, source: Path, speed_of: str = "") -> str:
    """The projection as text: the parts, the total, and every estimate or gap."""
    cells = len(grid.attacks) * len(grid.defenses) * len(grid.seeds)
    lines = [
        f"{experiment}: {len(grid.attacks)} attacks x {len(grid.defenses)} defenses x {len(grid.seeds)} seeds = "
        f"{cells} cells, {len(grid.attacks) * len(grid.seeds)} backdoored models; priced from {source}"
    ]
    if speed_of:
        lines.append(f"  AT THE SPEED OF {speed_of}, not the preset's {'/'.join(grid.setting)} (--as-measured)")
    lines += [
        f"  backdoored models (training + attack preparation)  {p.models_s / 60:8.1f} min",
        *(f"  {d:<10} cells{'':<37}{s / 60:8.1f} min" for d, s in p.cells_s.items()),
        f"  total{'':<47}{p.total_s / 3600:8.2f} h" + (" (a lower bound: unpriced parts below)" if p.unpriced else ""),
    ]
    if p.estimated:
        lines += [f"estimated ({len(p.estimated)}):", *(f"  {e}" for e in p.estimated)]
    if p.unpriced:
        lines += [f"unpriced ({len(p.unpriced)}):", *(f"  {u}" for u in p.unpriced)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.perf.project", description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweep folder whose report wrote results.csv")
    parser.add_argument("--experiment", default="rnp_cifar10", help="the preset whose grid to price")
    parser.add_argument("--seeds", default=None, help="seeds to price instead of the preset's, e.g. 0,1,2")
    parser.add_argument(
        "--as-measured", action="store_true", help="price with cells of another dataset/arch than the preset's"
    )
    args = parser.parse_args(argv)
    csv_path = args.sweep / "results.csv"
    if not csv_path.is_file():
        print(f"{csv_path} does not exist: run the sweep's report first (python -m benchmark.report {args.sweep})")
        return 2
    grid = grid_of(args.experiment)
    if args.seeds:
        grid = Grid(grid.attacks, grid.defenses, _values(args.seeds), grid.setting)
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    same = [r for r in rows if (r.get("dataset"), r.get("arch")) == grid.setting]
    speed_of = ""
    if not same:
        found = ", ".join(sorted("/".join(s) for s in settings_of(rows))) or "no finished cell"
        if not args.as_measured:
            print(
                f"{csv_path} measured {found}, not {args.experiment}'s {'/'.join(grid.setting)}: measure that "
                "setting (a few cells on the machine you plan for), or pass --as-measured to price the grid at "
                "the measured setting's speed"
            )
            return 2
        same, speed_of = rows, found
    print(render(grid, project(grid, measured(same)), args.experiment, csv_path, speed_of))
    return 0


if __name__ == "__main__":
    sys.exit(main())
