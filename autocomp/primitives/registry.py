"""Handlers for primitive configs, registered by config type.

A layer handler takes one Linear/Conv2d layer and its config and returns the layer to put in its place.
A model handler sees every layer's config of its type at once, for primitives that cannot act on one
layer alone (channel removal follows dependencies across layers; global pruning pools layers; activation
quantization calibrates on data).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from autocomp.primitives.configs import PrimitiveConfig


@dataclass(frozen=True)
class Context:
    """What model handlers may need besides the model: an example input and calibration batches."""

    example: torch.Tensor | None = None
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None  # (inputs, labels), a few hundred rows
    skeleton: bool = False  # only the shapes matter (a packed file will overwrite every tensor)


LayerHandler = Callable[[nn.Module, PrimitiveConfig], nn.Module]
# (model, {layer name: config}, context) -> model (the same object, changed in place, or a new one)
ModelHandler = Callable[[nn.Module, Mapping[str, PrimitiveConfig], Context], nn.Module]
HANDLERS: dict[type[PrimitiveConfig], LayerHandler] = {}
MODEL_HANDLERS: dict[type[PrimitiveConfig], ModelHandler] = {}


def handler(config_type: type[PrimitiveConfig]) -> Callable[[LayerHandler], LayerHandler]:
    """Register the decorated function as the layer handler of `config_type`."""

    def register(fn: LayerHandler) -> LayerHandler:
        HANDLERS[config_type] = fn
        return fn

    return register


def model_handler(config_type: type[PrimitiveConfig]) -> Callable[[ModelHandler], ModelHandler]:
    """Register the decorated function as the model handler of `config_type`."""

    def register(fn: ModelHandler) -> ModelHandler:
        MODEL_HANDLERS[config_type] = fn
        return fn

    return register


def apply_primitive(layer: nn.Module, config: PrimitiveConfig) -> nn.Module:
    try:
        fn = HANDLERS[type(config)]
    except KeyError:
        raise TypeError(f"no layer handler registered for {type(config).__name__}") from None
    return fn(layer, config)
