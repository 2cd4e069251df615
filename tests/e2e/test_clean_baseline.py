"""The clean-model baseline (attack=none, natural ASR), 95% t intervals, RNP − ANP paired by seed, and the
published-number registry beside our cells."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from attacks.none import NoAttack
from attacks.poison import poison_train_split, triggered_test
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError
from benchmark.core.io import atomic_write_json
from benchmark.report.published import load_registry, match, matches
from benchmark.report.stats import Paired, t_interval, t_quantile
from benchmark.report.table import Stat
from benchmark.report.write import write_report
from benchmark.run.config import build_run_config
from benchmark.run.model import clean_model_path, model_cache_path, new_model
from benchmark.run.natural import compose_attack
from benchmark.run.record import result_problems
from benchmark.weights.checkpoint import read_checkpoint, weights_digest
from tests.conftest import compose_cfg, group_options, option_file, run_composed_cell

# --- intervals ---------------------------------------------------------------------------------------------


def test_t_quantile_matches_the_standard_table() -> None:
    # two-sided 95% (t_{0.975}): df 1 -> 12.7062, 2 -> 4.3027, 30 -> 2.0423, 120 -> 1.9799; one-sided 95% at df 1
    for df, expected in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423), (120, 1.9799)):
        assert round(t_quantile(0.975, df), 4) == expected
    assert round(t_quantile(0.95, 1), 3) == 6.314
    assert t_quantile(0.975, 10**6) == pytest.approx(1.96, abs=1e-3)  # many seeds: the normal's 1.96


@pytest.mark.parametrize(("p", "df"), [(0.5, 2), (1.0, 2), (0.975, 0)])
def test_t_quantile_refuses_what_an_upper_critical_value_is_not(p: float, df: int) -> None:
    with pytest.raises(ValueError, match="t_quantile"):
        t_quantile(p, df)


def test_interval_of_three_seeds_by_hand() -> None:
    s = Stat.of([0.88, 0.90, 0.92])  # mean 0.90, s = 0.02
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(0.975, 2)
    assert s is not None and s.interval is not None
    assert s.interval.lo == pytest.approx(0.90 - half) and s.interval.hi == pytest.approx(0.90 + half)
    assert s.pct_interval() == "90.0 [85.0, 95.0]"
    assert t_interval([0.88, 0.90, 0.92]) == s.interval and t_interval([0.5]) is None
    one = Stat.of([0.5])
    assert one is not None and one.interval is None and one.pct_interval() == "50.0"


def test_an_interval_of_rates_is_shown_within_0_and_100_percent() -> None:
    asr = Stat.of([0.0, 0.0, 0.169])  # the quickstart's ASR after RNP, seeds 0-2: the t interval dips below 0
    assert asr is not None and asr.interval is not None and asr.interval.lo < 0
    assert asr.pct_interval() == f"5.6 [0.0, {100 * asr.interval.hi:.1f}]"
    ca = Stat.of([0.99, 1.0, 0.97])
    assert ca is not None and ca.interval is not None and ca.interval.hi > 1
    assert ca.interval.pct().endswith(", 100.0]")


def test_paired_difference_uses_only_shared_seeds() -> None:
    p = Paired.of({0: 0.90, 1: 0.80, 2: 0.70}, {0: 0.85, 1: 0.80, 2: 0.60, 3: 0.5})  # diffs .05, 0, .10
    half = 4.302653 * 0.05 / math.sqrt(3)
    assert p is not None and p.n == 3 and p.mean == pytest.approx(0.05)
    assert p.interval is not None and p.interval.lo == pytest.approx(0.05 - half)
    assert p.points() == "+5.0 [−7.4, +17.4]"
    single = Paired.of({0: 0.9}, {0: 0.8})
    assert single is not None and single.interval is None and single.points() == "+10.0"
    assert Paired.of({0: 0.9}, {1: 0.8}) is None


# --- attack=none ------------------------------------------------------------------------------------------


def test_no_attack_poisons_nothing_and_its_trigger_is_empty(tmp_home: Path) -> None:
    attack = build_run_config(compose_cfg(["attack=none", "dataset=embedded"])).attack
    assert isinstance(attack, NoAttack) and attack.natural_asr
    x = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    data = ImageSet(x, torch.arange(20) % 10)
    out = poison_train_split(data, attack, 10, torch.Generator().manual_seed(0))
    assert len(out.index) == 0 and len(out.cover) == 0 and torch.equal(out.images.x, x)
    triggered = triggered_test(data, attack, 10)  # the non-target images, unchanged, labelled as the target
    assert torch.equal(triggered.images.x, x[data.y != 0]) and (triggered.images.y == 0).all()
    with pytest.raises(ConfigError, match="poison_rate"):
        build_run_config(compose_cfg(["attack=none", "attack.poison_rate=0.1"]))


def test_natural_attacks_are_composed_as_their_cells_compose_them() -> None:
    wanet = compose_attack("wanet", "embedded", 3, "all2one")
    assert wanet.s == 1.0 and wanet.target == 3  # conf/attack_dataset/wanet_embedded.yaml, the clean cell's target
    assert compose_attack("wanet", "cifar10", 0, "all2one").s == 0.5
    with pytest.raises(ConfigError, match="'trojan', whose trigger is learned"):
        compose_attack("trojan", "embedded", 0, "all2one")
    with pytest.raises(ConfigError, match="'nosuch', which is not in conf/attack/; choose from"):
        compose_attack("nosuch", "embedded", 0, "all2one")


def _cell(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    result = run_composed_cell(["debug=default", *overrides], run_dir)
    assert result_problems(result) == []
    return result


def test_a_retrained_model_has_the_same_weights_digest_but_not_the_same_file_hash(tmp_home: Path) -> None:
    """weights_sha256 identifies the weights (reproducible run to run); model_sha256 the cache file (with its meta)."""
    first = _cell(["attack=badnets", "defense=none", "paths.cache=" + str(tmp_home / "cache1")], tmp_home / "a")
    again = _cell(["attack=badnets", "defense=none", "paths.cache=" + str(tmp_home / "cache2")], tmp_home / "b")
    assert first["model_source"] == again["model_source"] == "trained"
    assert first["weights_sha256"].startswith("sha256:") and first["weights_sha256"] == again["weights_sha256"]
    (entry,) = (tmp_home / "cache1").glob("*.safetensors")
    state = read_checkpoint(entry)["state_dict"]
    net = new_model(build_run_config(compose_cfg(["debug=default", "attack=badnets"])), torch.device("cpu"))
    net.load_state_dict(state)
    assert weights_digest(net) == first["weights_sha256"]  # the digest of the cached file's weights
    weight = next(k for k, v in state.items() if v.is_floating_point())  # by name: an int buffer may come first
    net.state_dict()[weight].add_(1e-3)  # in place, whatever the layout (conv weights are channels_last)
    assert weights_digest(net) != first["weights_sha256"]


def test_clean_cell_records_natural_asr_and_shares_the_clean_model_cache(tmp_home: Path) -> None:
    first = _cell(["attack=none", "defense=rnp"], tmp_home / "a")
    natural = first["natural_asr"]
    listed = ["badnets", "blend", "sig", "wanet", "ablend", "cl", "fc", "dfst"]
    assert list(natural["before"]) == listed and list(natural["after"]) == listed
    assert all(0 <= v <= 1 for phase in ("before", "after") for v in natural[phase].values())
    learned = "its trigger is learned with the backdoored model"
    assert {k: natural["left_out"][k] for k in ("dynamic", "lira", "trojan")} == dict.fromkeys(
        ("dynamic", "lira", "trojan"), learned
    )
    assert first["model_source"] == "trained" and "pruned" in first["defense_info"]
    rc = build_run_config(compose_cfg(["debug=default", "attack=none"]))
    device = torch.device("cpu")
    assert clean_model_path(rc, Path(rc.paths.cache), device).is_file()  # the clean model's entry...
    assert not model_cache_path(rc, Path(rc.paths.cache), device).exists()  # ...not a backdoored one's
    second = _cell(["attack=none", "defense=none"], tmp_home / "b")
    assert second["model_source"] == "cache" and second["model_sha256"] == first["model_sha256"]
    assert second["natural_asr"]["before"] == natural["before"]  # the same clean model, the same triggers
    assert "natural_asr" not in _cell(["attack=badnets", "defense=none"], tmp_home / "c")
    all2all = _cell(["attack=none", "defense=none", "attack.label_mode=all2all"], tmp_home / "d")["natural_asr"]
    assert list(all2all["before"]) == ["badnets", "blend", "wanet", "ablend", "dfst"]
    assert {k: all2all["left_out"][k] for k in ("sig", "cl", "fc")} == dict.fromkeys(
        ("sig", "cl", "fc"), "clean-label: no all2all trigger"
    )


# --- the published-number registry --------------------------------------------------------------------------

REGISTRY = load_registry()


def _config(overrides: list[str]) -> dict[str, Any]:
    out = OmegaConf.to_container(compose_cfg(overrides), resolve=True)
    assert isinstance(out, dict)
    return out


def _grid(preset: str) -> list[tuple[str, str]]:
    """(attack, defense) cells of an experiment preset's grid (its sweeper params), or its one cell."""
    cfg = compose_cfg([f"experiment={preset}"])
    params = OmegaConf.select(cfg, "hydra.sweeper.params")
    if params is None:
        raw = OmegaConf.load(option_file("experiment", preset))
        params = OmegaConf.select(raw, "hydra.sweeper.params")
    if params is None:
        return [(cfg.attack.name, cfg.defense.name)]
    return [(a, d) for a in str(params.attack).split(",") for d in str(params.defense).split(",")]


@pytest.mark.parametrize("preset", group_options("experiment"))
def test_every_experiment_preset_against_the_registry(preset: str, tmp_home: Path) -> None:
    shown = {}
    for attack, defense in _grid(preset):
        if defense not in ("rnp", "anp"):
            continue
        config = _config([f"experiment={preset}", f"attack={attack}", f"defense={defense}"])
        for m in matches(REGISTRY, config):
            shown[(attack, defense, m.entry.id)] = m.mismatches
            print(preset, attack, defense, m.entry.id, "match" if not m.mismatches else m.mismatches)
    datasets = {e.settings.get("dataset.name") for e in REGISTRY}
    if _config([f"experiment={preset}"])["dataset"]["name"] not in datasets:
        assert not shown, f"{preset}: entries of another dataset shown: {sorted(shown)}"  # nothing applies
        return
    assert shown, f"{preset}: no registry entry for any RNP/ANP cell"
    if preset == "rnp_cifar10":
        assert shown[("badnets", "rnp", "rnp-log-cifar10-resnet18-badnets-t0.20")] == []  # the paper's threshold
        assert shown[("badnets", "rnp", "rnp-log-cifar10-resnet18-badnets-t0.15")] == [
            "published at defense.prune_threshold 0.15, this cell 0.2"
        ]
        assert set(shown[("blend", "anp", "backdoorbench-cifar10-preact_resnet18-blend-anp")]) == {
            "published at arch.name preact_resnet18, this cell resnet18",
            "published at defense_data.size 2500, this cell 500",
            "published at defense.mask_lr 0.01, this cell 0.2",
            "published at defense.selection oracle, this cell threshold",
            "published at defense.batch_size 256, this cell 128",  # BackdoorBench's ANP batch
        }
        assert shown[("sig", "anp", "anp-paper-cifar10-resnet18")] == []  # settings match; values: null
    if preset == "rnp_imagenet12":
        assert shown[("badnets", "rnp", "rnp-paper-imagenet12-resnet18")] == []


def test_a_poison_rate_mismatch_is_named(tmp_home: Path) -> None:
    entry = next(e for e in REGISTRY if e.id == "rnp-log-cifar10-resnet18-badnets-t0.20")
    config = _config(["experiment=rnp_cifar10", "attack.poison_rate=0.05"])
    assert match(entry, config).mismatches == ["published at attack.poison_rate 0.1, this cell 0.05"]
    assert not match(entry, config).comparable and match(entry, _config(["experiment=rnp_cifar10"])).comparable


def test_registry_entries_cite_their_source_and_bad_entries_are_refused(tmp_path: Path) -> None:
    assert all(e.source["row"] and e.source["column"] for e in REGISTRY)
    assert all(e.note for e in REGISTRY if e.values is None)
    bad = tmp_path / "published.yaml"
    bad.write_text(
        "entries:\n"
        "  - id: x\n    source: {paper: P, where: T1, row: r}\n"
        "    settings: {dataset.name: cifar10, arch.name: resnet18, defense.name: rnp}\n"
        "    values: {after: {clean_acc: 93.4, asr: 0.1}}\n"
        "  - id: y\n    source: {paper: P, where: T1, row: r, column: c}\n"
        "    settings: {dataset.name: cifar10, arch.name: resnet18, defense.name: rnp}\n    values: null\n"
    )
    with pytest.raises(ConfigError) as err:
        load_registry(bad)
    text = str(err.value)
    assert "x: source.column is missing" in text and "x: values.after.clean_acc=93.4" in text
    assert "y: values: null needs a note" in text


# --- the report --------------------------------------------------------------------------------------------

RNP_CONFIG = {
    "dataset": {"name": "cifar10"},
    "arch": {"name": "resnet18"},
    "attack": {"name": "badnets", "poison_rate": 0.1, "target": 0, "label_mode": "all2one"},
    "defense_data": {"size": 500},
}
# (attack, defense) -> per seed (before CA, after CA, after ASR); before ASR 1.0 (badnets) or 0.02 (none)
CELLS = {
    ("badnets", "rnp"): [(0.90, 0.88, 0.10), (0.92, 0.90, 0.00), (0.94, 0.92, 0.20)],
    ("badnets", "anp"): [(0.90, 0.86, 0.05), (0.92, 0.90, 0.00), (0.94, 0.88, 0.10)],
    ("none", "none"): [(0.91, 0.91, 0.02), (0.93, 0.93, 0.02), (0.95, 0.95, 0.02)],
    ("none", "rnp"): [(0.91, 0.85, 0.02), (0.93, 0.90, 0.03), (0.95, 0.93, 0.02)],
    ("none", "anp"): [(0.91, 0.90, 0.02), (0.93, 0.92, 0.02), (0.95, 0.95, 0.01)],
}
RNP_DEFENSE = {
    "name": "rnp",
    "batch_size": 128,
    "unlearn_lr": 0.01,
    "clean_threshold": 0.2,
    "recover_epochs": 20,
    "selection": "threshold",
    "prune_threshold": 0.2,
}


def _result(attack: str, defense: str, seed: int, values: tuple[float, float, float]) -> dict[str, Any]:
    ca0, ca1, asr1 = values
    asr0 = 1.0 if attack == "badnets" else 0.02
    defense_cfg = RNP_DEFENSE if defense == "rnp" else {"name": defense, "selection": "threshold", "mask_lr": 0.2}
    result: dict[str, Any] = {
        "schema": 1,
        "cell": {"attack": attack, "dataset": "cifar10", "arch": "resnet18", "defense": defense, "seed": seed},
        "model_source": "cache",
        "model_sha256": f"{attack}-{seed}",
        "before": {"clean_acc": ca0, "asr": asr0, "robust_acc": 0.0},
        "after": {"clean_acc": ca1, "asr": asr1, "robust_acc": 0.5},
        "der": 0.5,
        "defense_info": {"pruned": 10 * (seed + 1)} if defense != "none" else {},
        "timing_s": {"total": 1.0},
        "config": {**RNP_CONFIG, "attack": {**RNP_CONFIG["attack"], "name": attack}, "defense": defense_cfg},
    }
    if attack == "none":
        after = {"badnets": 0.01 * (seed + 1), "blend": 0.1} if defense != "none" else {"badnets": 0.03, "blend": 0.2}
        result["natural_asr"] = {
            "before": {"badnets": 0.03, "blend": 0.2},
            "after": after,
            "left_out": {"trojan": "its trigger is learned with the backdoored model"},
        }
    return result


def _table_row(md: str, title: str, first: str) -> list[str]:
    section = md.split(f"### {title}", 1)[1].split("\n### ", 1)[0]
    for line in section.splitlines():
        cols = [c.strip() for c in line.strip("|").split("|")]
        if cols[0] == first:
            return cols[1:]
    raise AssertionError(f"no row {first!r} under {title!r}")


def test_report_shows_the_clean_model_the_paired_difference_and_published_numbers(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for (attack, defense), rows in CELLS.items():
        for seed, values in enumerate(rows):
            path = root / "cifar10/resnet18" / attack / defense / f"seed{seed}" / "result.json"
            atomic_write_json(path, _result(attack, defense, seed, values))
    write_report(root)
    md = (root / "results.md").read_text()
    assert (
        root / "plots/clean_model_cifar10_resnet18.png"
    ).is_file() and "plots/clean_model_cifar10_resnet18.png" in md
    # RNP − ANP on badnets: CA diffs +2, 0, +4 points (mean 2, s 2); ASR diffs +5, 0, +10 (mean 5, s 5)
    t2 = 4.302653  # t(0.975, 2)
    ca_half, asr_half = t2 * 2 / math.sqrt(3), t2 * 5 / math.sqrt(3)
    row = _table_row(md, "RNP − ANP, paired by seed (same backdoored model)", "badnets")
    assert row[0] == "3"
    assert row[1] == f"+2.0 [{2 - ca_half:+.1f}, {2 + ca_half:+.1f}]".replace("-", "−")
    assert row[2] == f"+5.0 [{5 - asr_half:+.1f}, {5 + asr_half:+.1f}]".replace("-", "−")
    assert _table_row(md, "RNP − ANP, paired by seed (same backdoored model)", "none (clean model)")[0] == "3"
    # the clean model: RNP costs 6, 3, 2 points (mean 3.67, s 2.08); 10/20/30 channels pruned
    cost = _table_row(md, "Clean model (attack=none): what each defense costs", "rnp")
    diffs = [-0.06, -0.03, -0.02]
    mean, s = sum(diffs) / 3, Stat.of(diffs).std  # type: ignore[union-attr]
    half = t2 * s / math.sqrt(3)
    expected = f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]".replace("-", "−")
    assert cost[0] == "89.3 ± 4.0" and cost[2] == expected
    assert cost[3] == "2.3 ± 0.6" and cost[4] == "20.0 ± 10.0"
    assert _table_row(md, "Clean model (attack=none): what each defense costs", "no defense")[0] == "93.0 ± 2.0"
    natural = _table_row(md, "Natural ASR on the clean model (%)", "badnets")
    assert natural == ["3.0 ± 0.0", "2.0 ± 1.0", "2.0 ± 1.0"]  # no defense (3 seeds of 0.03), rnp, anp
    assert "left out: trojan (its trigger is learned with the backdoored model)" in md
    intervals = _table_row(md, "Clean accuracy / ASR: 95% intervals over seeds (%)", "badnets")
    assert intervals[0].startswith("[87.0, 97.0] / ")  # no defense: 0.92 ± t2 * 0.02 / √3
    # published: the RNP log's threshold-0.20 row matches every setting of these cells; ANP's entries do not
    rnp_row = next(line for line in md.splitlines() if "rnp-log-cifar10-resnet18-badnets-t0.20" in line)
    assert "ours − published: −1.4 / +0.0 → −2.8 / +3.4" in rnp_row  # 92.0 − 93.4, 90.0 − 92.8, 10.0 − 6.61
    t15 = next(line for line in md.splitlines() if "badnets-t0.15" in line)
    assert "not compared: mismatches: published at defense.prune_threshold 0.15, this cell 0.2" in t15
    assert "mismatches: none" in rnp_row  # every comparison lists its mismatches, an empty list as none
    published = md.split("Published numbers beside ours")[1].split("\n## ")[0]
    rows = [line for line in published.splitlines() if line.startswith("| badnets") or line.startswith("| none")]
    assert rows and all("mismatches: " in line for line in rows)
    anp_row = next(line for line in md.splitlines() if "backdoorbench-cifar10-preact_resnet18-badnets-anp" in line)
    assert "published at arch.name preact_resnet18, this cell resnet18" in anp_row and "ours − published" not in anp_row
    paper = next(line for line in md.splitlines() if "rnp-paper-cifar10-resnet18" in line)
    assert "not available here: the table's numbers are not recorded" in paper
    assert "rnp-paper-imagenet12-resnet18" not in md  # no numbers and another dataset: not listed
    page = (root / "report.html").read_text()
    assert "Clean model (attack=none): what each defense costs" in page and "RNP − ANP, paired by seed" in page
    assert "Published numbers beside ours" in page
