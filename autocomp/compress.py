"""compress(model, policy): a new, compressed module; the input model is never mutated."""

from __future__ import annotations

import copy

import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp.layers import PARAMS, attention_kind, layer_kind, named_layer
from autocomp.policy import Policy, PolicyLike
from autocomp.primitives import MODEL_HANDLERS, STAGES, CompressContext, apply_primitive

LAYER_TYPES = (nn.Linear, nn.Conv2d)  # what layer handlers (low rank, substitution, your own) are given


def layer_targets(module: nn.Module) -> list[str]:
    """Relative names of the Linear/Conv2d layers inside `module` ("" for the module itself).

    An attention module stands for its in-projection, which no layer handler takes: none (its out_proj is a
    layer of its own).
    """
    if layer_kind(module) in ("MultiheadAttention", PARAMS):
        return []
    return [name for name, m in module.named_modules() if isinstance(m, LAYER_TYPES)]


def compress(
    model: nn.Module,
    policy: PolicyLike,
    *,
    example: torch.Tensor | None = None,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    skeleton: bool = False,
) -> nn.Module:
    """Apply `policy` to a deep copy of `model`, one stage (primitive type) at a time in `STAGES` order.

    A primitive that replaces a layer (low rank -> two or three layers) hands every later primitive of that
    layer all of the replacement's parts, so e.g. pruning and quantization apply to each factor. Model-level
    primitives (channel removal, global pruning, activation calibration) get `example` / `calibration`.
    `skeleton` builds only the shapes a packed file is then loaded into (uncalibrated ranges allowed).
    `policy` may be a Policy or its dict form (a search trial's `.policy`).
    """
    policy = Policy.coerce(policy)
    names = [name for name, _ in policy.layers]
    for name in names:
        module = named_layer(model, name)
        nested = [other for other in names if other != name and (not name or other.startswith(name + "."))]
        if layer_kind(module) in ("MultiheadAttention", PARAMS) or attention_kind(module):
            nested = []  # attention / Params stand for their own tensors (or heads) and are never replaced
        if not name or nested:  # one layer's replacement would move the other out from under it
            raise AutocompError(f"policy names layer '{name}' and layers inside it ({', '.join(nested)}); "
                                "name leaf layers only")
    compressed = copy.deepcopy(model)
    context = CompressContext(example=example, calibration=calibration, skeleton=skeleton)
    for stage in STAGES:
        present = {name for name, _ in compressed.named_modules()}  # a skipped branch's layers are gone
        configs = {name: c for name, cs in policy.layers for c in cs
                   if type(c) is stage and not c.is_identity() and name in present}
        if not configs:
            continue
        if stage in MODEL_HANDLERS:
            compressed = MODEL_HANDLERS[stage](compressed, configs, context)
            continue
        for layer_name, config in configs.items():
            module = compressed.get_submodule(layer_name)
            for target in layer_targets(module):
                part = module.get_submodule(target) if target else module
                replacement = apply_primitive(part, config)
                if replacement is part:
                    continue
                if target:
                    module.set_submodule(target, replacement)
                else:
                    module = replacement
            compressed.set_submodule(layer_name, module)
    return compressed.eval()
