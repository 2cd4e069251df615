"""Backdoor attacks: one module per attack, each a subclass of `attacks.base.Attack`.

Adding an attack: a module here with an `Attack` subclass whose `apply` stamps the trigger on a
batch, and a YAML in `conf/attack/` whose `_target_` names it. An attack whose training trigger differs
(`apply_train`) or that adds label-keeping cover samples (`cover_fraction`, `apply_cover`) overrides
those too. Choosing which samples to poison and relabelling them is shared code (`attacks.poison`),
not the attack's business.
"""

from attacks.base import Attack

__all__ = ["Attack"]
