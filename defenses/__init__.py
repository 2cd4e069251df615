"""Backdoor defenses: one module per defense, each a subclass of `defenses.base.Defense`.

Adding a defense: a module here whose `Defense` subclass maps (model, defense data) to a defended
model plus info, and a YAML in `conf/defense/` whose `_target_` names it. A defense sees only the
clean defense data it is given, never test data, and writes no files.
"""

from defenses.base import CurvePoint, Defense, DefenseData, DefenseOutput

__all__ = ["CurvePoint", "Defense", "DefenseData", "DefenseOutput"]
