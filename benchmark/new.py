"""`python -m benchmark.new defense NAME` (or `attack NAME`): the files and rows a new method needs.

A method is four things the project checks (tests/report/test_references.py, tests/e2e/test_budgets.py):
its module (`defenses/NAME.py` / `attacks/NAME.py`), its YAML (`conf/<group>/NAME.yaml`, whose header cites
its paper and code and points at docs/references.md), its row in docs/references.md and its row in
tests/helpers/budgets.py. This writes all four, so that the new option composes, runs as a `debug=default`
cell and passes those checks as written; the method itself is then yours to fill in.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmark.core.errors import BenchmarkError
from benchmark.core.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]  # the checkout: attacks/, defenses/, conf/, docs/, tests/
KINDS = ("attack", "defense")
NAME = re.compile(r"[a-z][a-z0-9_]*")

DEFENSE_MODULE = '''"""{title}: (what it does and the paper it follows; its sources: conf/defense/{name}.yaml)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from benchmark.core.validation import bounded
from defenses.base import Defense, DefenseData, DefenseOutput


@dataclass
class {cls}(Defense):
    """(One line on the method.) Parameters are checked fields; the YAML gives their defaults."""

    epochs: int = bounded(1, 0, 1000)  # an example parameter: replace with the method's own

    def __call__(self, model: nn.Module, data: DefenseData, gen: torch.Generator) -> DefenseOutput:
        """Works on a copy (the harness keeps the original) and sees only the clean defense data."""
        defended = copy.deepcopy(model)
        # Your method goes here: train, prune or repair `defended` with data.images (never test data),
        # drawing random numbers only from `gen`. Record what it did in `info` (and a curve, if it has one).
        return DefenseOutput(model=defended.eval(), info={{"epochs": self.epochs}})
'''

ATTACK_MODULE = '''"""{title}: (the trigger, and the paper it follows; see conf/attack/{name}.yaml for its sources)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attacks.base import Attack
from benchmark.core.validation import bounded


@dataclass
class {cls}(Attack):
    """(One line on the trigger.) A fixed trigger: a `size` x `size` white square in the top-left corner."""

    size: int = bounded(3, 1, 64)  # an example parameter: replace with the trigger's own

    def apply(self, x: Tensor) -> Tensor:
        """Stamp the test-time trigger: (N, C, H, W) uint8 -> the same, on the same device."""
        out = x.clone()
        out[..., : self.size, : self.size] = 255
        return out
'''

YAML = """# Paper: "(title of the paper)", (venue, year), (arXiv id).
# Code the defaults were read from: (owner/name, or —).
# All sources: docs/references.md.
# {title}: (what it does; which defaults come from the paper, which from the authors' code, which are ours).
name: {name}
_target_: {module}.{cls}
{params}
"""

PARAMS = {
    "defense": "epochs: 1            # (where this default comes from)",
    "attack": "target: 0\npoison_rate: 0.1\nlabel_mode: all2one\nsize: 3              # (where this comes from)",
}
TABLES = {"defense": "## Defenses", "attack": "## Attacks"}  # docs/references.md's section of each kind


class ScaffoldError(BenchmarkError):
    """The scaffold cannot be written as asked (bad name, an option that exists, a file it cannot edit)."""


@dataclass(frozen=True)
class Plan:
    """What scaffolding one method writes: new files and the rows added to two existing ones."""

    kind: str
    name: str
    root: Path

    @property
    def cls(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("_") if part)

    @property
    def module(self) -> Path:
        return self.root / f"{self.kind}s" / f"{self.name}.py"

    @property
    def yaml(self) -> Path:
        return self.root / "conf" / self.kind / f"{self.name}.yaml"


def check_name(kind: str, name: str, root: Path) -> Plan:
    """A plan for a new option `name` of `kind`, or a clear error naming what is wrong."""
    if kind not in KINDS:
        raise ScaffoldError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if not NAME.fullmatch(name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"name {name!r} is not allowed: use lower-case letters, digits and _, starting with a letter "
            f"(it is the option name, the module name and the YAML file name)"
        )
    plan = Plan(kind, name, root)
    taken = [p for p in (plan.module, plan.yaml) if p.exists()]
    if taken:
        raise ScaffoldError(f"{kind} {name!r} exists already ({', '.join(map(str, taken))}); pick another name")
    return plan


def reference_row(plan: Plan, text: str) -> str:
    """docs/references.md with the method's row appended to its kind's table."""
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == TABLES[plan.kind])
    except StopIteration:
        raise ScaffoldError(f"docs/references.md has no '{TABLES[plan.kind]}' section to add the row to") from None
    end = start + 1
    while end < len(lines) and not lines[end].startswith("|"):
        end += 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    row = f"| `{plan.name}` | (paper title) | (authors) | (venue, year) | (arXiv id or —) | (owner/name or —) |\n"
    return "".join([*lines[:end], row, *lines[end:]])


def budget_row(plan: Plan, text: str) -> str:
    """tests/helpers/budgets.py with the method's row added to its kind's table (a fast debug cell)."""
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == f'"{plan.kind}": {{')
        end = next(i for i in range(start, len(lines)) if lines[i].strip() == "},")
    except StopIteration:
        raise ScaffoldError(
            f'tests/helpers/budgets.py has no "{plan.kind}": {{ ... }} table to add the row to'
        ) from None
    row = f'        "{plan.name}": Budget(),  # scaffolded: set its speed, shrink, efficacy (and an implant bar)\n'
    return "".join([*lines[:end], row, *lines[end:]])


def scaffold(kind: str, name: str, root: Path = ROOT) -> list[Path]:
    """Write the module and YAML of a new method and add its two rows; the paths written."""
    plan = check_name(kind, name, root)
    refs, budgets = root / "docs" / "references.md", root / "tests" / "helpers" / "budgets.py"
    missing = [p for p in (refs, budgets) if not p.is_file()]
    if missing:
        raise ScaffoldError(f"{', '.join(map(str, missing))} not found: run this from a checkout of the project")
    new_refs, new_budgets = reference_row(plan, refs.read_text()), budget_row(plan, budgets.read_text())
    title = plan.cls
    template = DEFENSE_MODULE if kind == "defense" else ATTACK_MODULE
    atomic_write_text(plan.module, template.format(title=title, name=name, cls=plan.cls))
    module = f"{kind}s.{name}"
    atomic_write_text(plan.yaml, YAML.format(title=title, name=name, module=module, cls=plan.cls, params=PARAMS[kind]))
    atomic_write_text(refs, new_refs)
    atomic_write_text(budgets, new_budgets)
    return [plan.module, plan.yaml, refs, budgets]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.new", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("name", help="the option name: lower-case letters, digits and _")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to write into (default: this one)")
    args = parser.parse_args(argv)
    try:
        written = scaffold(args.kind, args.name, args.root)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(f"wrote {p}" for p in written))
    print(
        f"next: fill in the method and its YAML header, the row in docs/references.md and the budget row; "
        f"try it with `python -m benchmark debug=default {args.kind}={args.name}`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
