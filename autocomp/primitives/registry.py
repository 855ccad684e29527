"""Handlers for primitive configs, registered by config type; `register_primitive` adds a new primitive.

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

from autocomp.primitives.configs import CONFIGS, STAGES, PrimitiveConfig
from autocomp.primitives.coverage import SUPPORTS, SupportsHook


@dataclass(frozen=True)
class CompressContext:
    """What model handlers may need besides the model: an example input and calibration batches."""

    example: torch.Tensor | None = None
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None  # (inputs, labels), a few hundred rows
    skeleton: bool = False  # only the shapes matter (a packed file will overwrite every tensor)


LayerHandler = Callable[[nn.Module, PrimitiveConfig], nn.Module]
# (model, {layer name: config}, context) -> model (the same object, changed in place, or a new one)
ModelHandler = Callable[[nn.Module, Mapping[str, PrimitiveConfig], CompressContext], nn.Module]
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


def supports(config_type: type[PrimitiveConfig]) -> Callable[[SupportsHook], SupportsHook]:
    """Register the decorated `fn(module, name, model, example) -> reason | None` as `config_type`'s coverage hook."""

    def register(fn: SupportsHook) -> SupportsHook:
        SUPPORTS[config_type] = fn
        return fn

    return register


def register_primitive(
    config_type: type[PrimitiveConfig],
    *,
    layer: LayerHandler | None = None,
    model: ModelHandler | None = None,
    before: str | None = None,
    supports: SupportsHook | None = None,
) -> type[PrimitiveConfig]:
    """Add a primitive: its config class (NAME, KNOBS, fields, is_identity) and one handler.

    `layer(module, config)` returns the layer to put in the module's place; `model(model, configs,
    context)` sees every layer's config at once. `before` names the primitive it is applied before
    (default: last, after quantize). Search-space files, policies and `compress` then know it by NAME.
    `supports(module, name, model, example)` returns None where the primitive can compress that layer, else
    a one-line reason; the space binder refuses a selection it refuses (default: every layer whose kind is
    in the config's APPLIES_TO is supported).
    """
    if (layer is None) == (model is None):
        raise ValueError("register_primitive takes exactly one of layer= and model=")
    if not config_type.NAME or config_type.NAME in CONFIGS and CONFIGS[config_type.NAME] is not config_type:
        raise ValueError(f"primitive name '{config_type.NAME}' is empty or already taken")
    if config_type not in STAGES:
        if before is not None and before not in CONFIGS:
            raise ValueError(f"register_primitive: before='{before}' names no primitive (known: {', '.join(CONFIGS)})")
        at = len(STAGES) if before is None else STAGES.index(CONFIGS[before])
        STAGES.insert(at, config_type)
    CONFIGS[config_type.NAME] = config_type
    if layer is not None:
        HANDLERS[config_type] = layer
    else:
        MODEL_HANDLERS[config_type] = model  # type: ignore[assignment]
    if supports is not None:
        SUPPORTS[config_type] = supports
    else:
        SUPPORTS.pop(config_type, None)
    return config_type


def apply_primitive(layer: nn.Module, config: PrimitiveConfig) -> nn.Module:
    """The layer handler of `config`'s type applied to `layer`."""
    try:
        fn = HANDLERS[type(config)]
    except KeyError:
        raise TypeError(f"no layer handler registered for {type(config).__name__}") from None
    return fn(layer, config)
