"""Handlers for primitive configs, registered by config type."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from autocomp.primitives.configs import PrimitiveConfig

# a handler takes one Linear/Conv2d layer and a config, and returns the layer to put in its place
Handler = Callable[[nn.Module, PrimitiveConfig], nn.Module]
HANDLERS: dict[type[PrimitiveConfig], Handler] = {}


def handler(config_type: type[PrimitiveConfig]) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of `config_type`."""

    def register(fn: Handler) -> Handler:
        HANDLERS[config_type] = fn
        return fn

    return register


def apply_primitive(layer: nn.Module, config: PrimitiveConfig) -> nn.Module:
    try:
        fn = HANDLERS[type(config)]
    except KeyError:
        raise TypeError(f"no handler registered for {type(config).__name__}") from None
    return fn(layer, config)
