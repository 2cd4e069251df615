"""Architecture registry: a name maps to a factory `(num_classes, in_channels, norm_layer, **kw) -> nn.Module`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from benchmark.core.errors import ConfigError

NormLayer = Callable[[int], nn.Module]
Factory = Callable[..., nn.Module]
_ARCHS: dict[str, Factory] = {}


def register_arch(fn: Factory) -> Factory:
    """Register a factory under its function name; registering a name twice is a bug and raises."""
    if fn.__name__ in _ARCHS:
        raise KeyError(f"architecture {fn.__name__!r} registered twice")
    _ARCHS[fn.__name__] = fn
    return fn


def arch_names() -> list[str]:
    return sorted(_ARCHS)


def build_arch(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
    **kwargs: object,
) -> nn.Module:
    """Build architecture `name`; an unknown name raises with the valid choices."""
    if name not in _ARCHS:
        raise ConfigError(f"Unknown architecture {name!r}; choose from {', '.join(arch_names())}")
    return _ARCHS[name](num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer, **kwargs)
