"""One table of what each option of the method and data groups costs the test suites, and what it must show.

Adding an attack, defense, dataset or architecture means adding its row here (`test_budgets` fails until
there is one); from then on the parametrised tests run it for free: its debug smoke run in the fast or
slow suite, its shrunk efficacy run, and its implant bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Budget:
    """speed: the suite the option's end-to-end debug run belongs to (slow: over ~10 s on 2 cores).

    shrink: overrides for the shortest run that still reaches every code path (on top of `debug=default`).
    efficacy: defenses: overrides for the fast test that removes a planted backdoor (fewer iterations only).
    min_asr: attacks: the ASR the slow implant test must exceed (chance is about 0.1), in a `debug=implant` cell.
    implant: attacks: overrides on top of `debug=implant` that the attack needs to plant its backdoor.
    offline: whether the data is on this machine without a download (datasets).
    progress: attacks with a long preparation loop of their own: the start of the progress line it must log
    (benchmark.core.progress), so that a cluster log shows it working rather than hanging.
    """

    speed: Literal["fast", "slow"] = "fast"
    shrink: tuple[str, ...] = ()
    efficacy: tuple[str, ...] = ()
    min_asr: float | None = None
    implant: tuple[str, ...] = ()
    offline: bool = True
    progress: str = ""


BUDGETS: dict[str, dict[str, Budget]] = {
    "attack": {
        "badnets": Budget(min_asr=0.8),  # also the session fixture's barely-learned backdoor (tests/conftest.py)
        "blend": Budget(min_asr=0.9),
        "sig": Budget(min_asr=0.85),  # 0.877 in a debug=implant cell (random streams v2, seed 0)
        "wanet": Budget(min_asr=0.8, implant=("train.epochs=10",)),  # its subtle warp: 0.862 at 10 epochs, 0.617 at 6
        "ablend": Budget(min_asr=0.7),  # 5% payload + 5% cover here (conf/attack_dataset/ablend_embedded.yaml)
        # The clean-model attacks retrain a clean model briefly: on 3,000 images TrojanNN's and AWP's backdoors
        # stay weak, so they (and CL, FC: one clean model for the four) take the quickstart's 11,000.
        "trojan": Budget(min_asr=0.8, implant=("dataset.train_limit=null",), progress="trojan trigger: step"),
        "cl": Budget(min_asr=0.5, implant=("dataset.train_limit=null",), progress="cl adversarial poisons: batch"),
        "fc": Budget(min_asr=0.3, implant=("dataset.train_limit=null",), progress="fc crafting poisons: batch"),
        "awp": Budget(min_asr=0.7, implant=("dataset.train_limit=null",)),
        "dynamic": Budget(  # trains a trigger generator with the classifier; too few images to implant at 3,000
            min_asr=0.7, implant=("dataset.train_limit=null",), progress="dynamic mask generator: epoch"
        ),
        "lira": Budget(min_asr=0.7),  # alternates generator and classifier updates
        "dfst": Budget(
            min_asr=0.7, shrink=("train.epochs=2",), progress="dfst detox injector: epoch"
        ),  # epochs 2: one detox round
        "none": Budget(),  # the clean model: nothing to implant (tests/e2e/test_clean_baseline.py)
    },
    "defense": {
        "none": Budget(),
        "rnp": Budget(efficacy=("defense.recover_epochs=10",)),
        # 100 of 2000 iterations, pruning the 20 lowest of the tiny net's 160 masks (12%): that removes the
        # fixture's backdoor, while the fixed threshold 0.2 prunes too few channels of a net this small
        # (docs/results.md).
        "anp": Budget(efficacy=("defense.iterations=100", "defense.selection=count", "defense.prune_count=20")),
        "fp": Budget(efficacy=("defense.epochs=10",)),
        "clp": Budget(),
        "nad": Budget(efficacy=("defense.teacher_epochs=3", "defense.epochs=5")),  # of 10 / 20: still removes it
        "ft": Budget(efficacy=("defense.epochs=10",)),
        "ibau": Budget(efficacy=("defense.n_rounds=1",)),  # 1 of 5 rounds: lowers the ASR, not to 0
    },
    "dataset": {
        "embedded": Budget(),
        "fashion_mnist": Budget(speed="slow", offline=False),  # Debian's dataset-fashion-mnist, where installed
        "cifar10": Budget(speed="slow", offline=False),
        "cifar100": Budget(speed="slow", offline=False),
        "gtsrb": Budget(speed="slow", offline=False),
        "imagenet12": Budget(speed="slow", shrink=("arch=resnet18_imagenet",), offline=False),
    },
    "arch": {
        "convnet": Budget(),
        "resnet18": Budget(),  # at width 4 (conf/arch_debug): 4 s as a debug cell
        "preact_resnet18": Budget(),
        # no width setting: full-size nets, 8-90 s as a debug cell on 2 cores
        "vgg16_bn": Budget(speed="slow"),
        "mobilenet_v2": Budget(speed="slow"),
        "resnet18_imagenet": Budget(speed="slow"),
    },
}
