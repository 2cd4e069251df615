"""A cell's coordinates, spelled once: `CellKey`'s fields, in the order of a sweep's directories.

Every list of coordinates (result.json's `cell`, the report's columns, the sweep's grid check, the Hydra
groups that name a cell) and every parser of them (a sweep subdir, a failed cell's partial config) derives
from these fields, so adding or reordering a coordinate is one edit here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CellKey:
    """Dataset, architecture, attack, defense and seed: the one identity of a cell."""

    dataset: str
    arch: str
    attack: str
    defense: str
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_key(self) -> str:
        """The zoo's key for the cell's backdoored model: `dataset/arch/attack`."""
        return f"{self.dataset}/{self.arch}/{self.attack}"

    def label(self) -> str:
        """One token naming the cell (wandb run names)."""
        return "-".join(str(v) for v in asdict(self).values())

    def subdir(self) -> str:
        """Where a sweep files the cell: `<dataset>/<arch>/<attack>/<defense>/seed<N>`."""
        return "/".join([*(str(getattr(self, g)) for g in CELL_GROUPS), f"seed{self.seed}"])

    @classmethod
    def from_subdir(cls, rel_dir: Path) -> CellKey | None:
        """The key a sweep subdir spells (its last levels), or None when the path is not one."""
        parts = Path(rel_dir).parts[-len(CELL_FIELDS) :]
        if len(parts) < len(CELL_FIELDS) or not parts[-1].startswith("seed") or not parts[-1][4:].isdigit():
            return None
        return cls(*parts[:-1], seed=int(parts[-1][4:]))


CELL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CellKey))
CELL_GROUPS: tuple[str, ...] = tuple(f for f in CELL_FIELDS if f != "seed")  # config groups naming the cell


def partial_cell(values: Mapping[str, Any]) -> dict[str, Any]:
    """The coordinates that `values` holds, None for the others (a failed cell may lack some)."""
    return {k: values.get(k) for k in CELL_FIELDS}
