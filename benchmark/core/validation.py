"""Type and range checks for the dataclasses that Hydra instantiates (attacks, defenses, recipes).

One mechanism for every parameter object: annotate the field, give it a range with `bounded`, and
`check_fields` (called from `__post_init__`) rejects a bad value with a message that names the
parameter, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from benchmark.core.errors import ConfigError


def bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A dataclass field whose value must lie in [lo, hi] (either side may be open)."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi)})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    """True when `value` fits the annotation `tp` (ints are accepted where floats are expected)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return str(tp).replace("typing.", "") if typing.get_args(tp) else _type_name(tp)


def check_fields(obj: Any) -> None:
    """Check every field of a dataclass instance against its annotation and its `bounded` range."""
    owner = type(obj).__name__
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        tp = hints.get(f.name, Any)
        if not _matches(value, tp):
            raise ConfigError(f"{owner}.{f.name}={value!r} is invalid: expected {_describe(tp)}")
        lo, hi = f.metadata.get("range", (None, None))
        if value is None or (lo is None and hi is None):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                span = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
                raise ConfigError(f"{owner}.{f.name}={value!r} is out of range: allowed {span}")


class Checked:
    """Mixin for parameter dataclasses: validates the fields as soon as the object is built."""

    def __post_init__(self) -> None:
        check_fields(self)
