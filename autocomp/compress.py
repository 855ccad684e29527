"""compress(model, policy): a new, compressed module; the input model is never mutated."""

from __future__ import annotations

import copy

from torch import nn

from autocomp.errors import AutocompError
from autocomp.policy import Policy
from autocomp.primitives import apply_primitive

LAYER_TYPES = (nn.Linear, nn.Conv2d)


def _targets(module: nn.Module) -> list[str]:
    """Relative names of the Linear/Conv2d layers inside `module` ("" for the module itself)."""
    return [name for name, m in module.named_modules() if isinstance(m, LAYER_TYPES)]


def compress(model: nn.Module, policy: Policy) -> nn.Module:
    """Apply `policy` to a deep copy of `model`, layer by layer, primitives in `STAGES` order.

    A primitive that replaces a layer (low rank -> two layers) hands every later primitive of that
    layer all of the replacement's parts, so e.g. pruning and quantization apply to both SVD factors.
    """
    compressed = copy.deepcopy(model)
    for layer_name, configs in policy.layers:
        try:
            module = compressed.get_submodule(layer_name)
        except AttributeError:
            raise AutocompError(f"policy names layer '{layer_name}', which the model does not have") from None
        for config in configs:
            if config.is_identity():
                continue
            for target in _targets(module):
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
