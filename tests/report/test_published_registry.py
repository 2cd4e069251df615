"""conf/published.yaml: every entry says exactly where its numbers come from, with the caveats of a fair comparison."""

from __future__ import annotations

import re

from benchmark.report.published import load_registry

ENTRIES = load_registry()
FILE_AND_PLACE = re.compile(r"[\w.-]+\.(txt|log|csv|md|yaml|py) lines? \d+|table")


def test_every_entry_names_its_file_and_line_or_table() -> None:
    missing = [e.id for e in ENTRIES if not FILE_AND_PLACE.search(e.source["where"])]
    assert not missing, missing


def test_the_rnp_log_has_every_threshold_of_its_sweep_with_backdoorbenchs_default() -> None:
    log = {e.settings["defense.prune_threshold"]: e for e in ENTRIES if e.id.startswith("rnp-log-")}
    assert sorted(log) == [round(0.05 * i, 2) for i in range(19)]
    t70 = log[0.7]
    assert (t70.values["pruned"], t70.value("after", "asr"), t70.value("after", "clean_acc")) == (204, 0.0011, 0.8167)
    assert "pruning_by_threshold.txt line 16" in t70.source["where"]
    assert any("BackdoorBench's RNP default" in c for c in t70.caveats)


def test_backdoorbench_entries_carry_the_caveats_and_lira_is_unusable() -> None:
    bb = [e for e in ENTRIES if e.id.startswith("backdoorbench-")]
    assert {e.defense for e in bb} == {"anp", "ft", "fp", "nad", "clp", "ibau"}
    assert all(any("its own recipe" in c for c in e.caveats) for e in bb)
    assert all(any("lowest TEST ASR" in c for c in e.caveats) for e in bb if e.defense == "anp")
    assert all(e.settings["defense.batch_size"] == 256 for e in bb if e.defense == "anp")
    assert all(any("3x3 white square" in c for c in e.caveats) for e in bb if e.attack == "badnets")
    lira = [e for e in bb if e.attack == "lira"]
    assert lira and all(e.values is None and e.note.startswith("unusable") for e in lira)
    anp_paper = next(e for e in ENTRIES if e.id == "anp-paper-cifar10-resnet18")
    assert any("5% poison" in c for c in anp_paper.caveats)
