"""Natural ASR: what each fixed trigger does to a model with no backdoor (the cells of `attack=none`).

A defense that lowers a backdoored model's ASR to 5% has done nothing if the clean model already sends 5%
of triggered images to the target class. For the attacks `NoAttack.natural_asr` lists, each test trigger is
composed as a cell of that attack would compose it (conf/attack/<name>.yaml, then the optional
conf/attack_dataset/<name>_<dataset>.yaml), with the clean cell's target and label mode, and applied to the
clean model before and after the defense. Attacks whose trigger is learned (they keep a `trigger_state`)
cannot be listed: without a backdoored model their trigger does not exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from attacks.base import Attack
from attacks.none import NoAttack
from attacks.poison import triggered_test
from benchmark import CONF_DIR
from benchmark.core.data import ImageSet
from benchmark.core.errors import ConfigError
from benchmark.core.evaluate import for_inference, predict
from benchmark.core.precision import Precision
from benchmark.run.config import build_target


def learns_trigger(attack: Attack) -> bool:
    """True for attacks whose trigger is learned and cached with the model (Trojan, Dynamic, LIRA)."""
    return type(attack).trigger_state is not Attack.trigger_state


def compose_attack(name: str, dataset: str, target: int, label_mode: str, conf_dir: Path = Path(CONF_DIR)) -> Attack:
    """Attack `name` as a cell on `dataset` composes it, retargeted to `target` / `label_mode`."""
    base = conf_dir / "attack" / f"{name}.yaml"
    if not base.is_file():
        choices = sorted(p.stem for p in (conf_dir / "attack").glob("*.yaml") if p.stem != "none")
        raise ConfigError(f"attack.natural_asr names {name!r}, which is not in conf/attack/; choose from {choices}")
    node = OmegaConf.load(base)
    special = conf_dir / "attack_dataset" / f"{name}_{dataset}.yaml"
    if special.is_file():
        node = OmegaConf.merge(node, OmegaConf.load(special))
    node.target, node.label_mode = target, label_mode
    attack = build_target(node, Attack)
    if learns_trigger(attack):
        raise ConfigError(
            f"attack.natural_asr names {name!r}, whose trigger is learned while its backdoored model trains; "
            "natural ASR needs a fixed trigger (take it out of the list)"
        )
    return attack


def left_out(listed: list[str], conf_dir: Path = Path(CONF_DIR)) -> dict[str, str]:
    """Every other attack option, with the reason it has no natural ASR (for result.json and the report)."""
    out = {}
    for path in sorted((conf_dir / "attack").glob("*.yaml")):
        if path.stem in listed or path.stem == "none":
            continue
        cls = build_target(OmegaConf.load(path), Attack)
        out[path.stem] = (
            "its trigger is learned with the backdoored model"
            if learns_trigger(cls)
            else "not listed in attack.natural_asr"
        )
    return out


def natural_attacks(attack: Attack, dataset: str, num_classes: int) -> dict[str, Attack]:
    """The listed fixed-trigger attacks of a clean cell (empty for any other cell), checked for the dataset."""
    if not isinstance(attack, NoAttack):
        return {}
    out = {}
    for name in attack.natural_asr:
        composed = compose_attack(name, dataset, attack.target, attack.label_mode)
        if composed.clean_label and attack.label_mode == "all2all":
            continue  # a clean-label trigger has no all2all form (natural_record says so)
        composed.check_dataset(num_classes)
        out[name] = composed
    return out


def natural_asr(
    model: nn.Module, test: ImageSet, attacks: dict[str, Attack], num_classes: int, batch: int, precision: Precision
) -> dict:
    """ASR of each attack's test trigger on `model`: {name: fraction}.

    Only the triggered images are predicted (the cell's own evaluation has the clean accuracy), with the model
    prepared for inference once for all triggers.
    """
    if not attacks:
        return {}
    ready = for_inference(model, test.x.device)
    out = {}
    for name, attack in attacks.items():
        triggered = triggered_test(test, attack, num_classes)
        hits = predict(ready, triggered.images.x, batch, precision) == triggered.images.y
        out[name] = round(hits.float().mean().item(), 6) if len(hits) else float("nan")
    return out


def natural_record(
    attack: NoAttack, attacks: dict[str, Attack], before: dict[str, float], after: dict[str, float]
) -> dict[str, Any]:
    """result.json's `natural_asr`: before/after per attack, and the attacks left out with the reason."""
    skipped = {n: "clean-label: no all2all trigger" for n in attack.natural_asr if n not in attacks}
    return {"before": before, "after": after, "left_out": dict(sorted({**left_out(list(attacks)), **skipped}.items()))}
