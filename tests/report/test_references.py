"""The project carries its own sources: each method's YAML cites its paper and code, and docs/references.md
lists them all; nothing points at a file outside the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import CONF, group_options

ROOT = Path(__file__).resolve().parents[2]
REFERENCES = (ROOT / "docs" / "references.md").read_text()
METHODS = [(g, o) for g in ("attack", "defense") for o in group_options(g) if o != "none"]


@pytest.mark.parametrize(("group", "option"), METHODS)
def test_each_method_cites_its_paper_and_the_references_page(group: str, option: str) -> None:
    header = [line for line in (CONF / group / f"{option}.yaml").read_text().splitlines() if line.startswith("#")]
    text = " ".join(header[:4])
    assert text.startswith('# Paper: "') and "Code the defaults were read from:" in text
    assert "docs/references.md" in text
    assert f"| `{option}` |" in REFERENCES  # its row on the page


def test_no_file_cites_a_document_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    name = "REFERENCE" + ".md"  # spelt in two parts so that this file does not match itself
    hits = [f for f in tracked if (ROOT / f).is_file() and name in (ROOT / f).read_text(errors="ignore")]
    assert hits == []
