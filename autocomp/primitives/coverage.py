"""Which layers a primitive can compress: each primitive's `supports` hook, asked before anything runs.

Pure Python (no torch import): the space binder asks it with the model object it was given. A hook is
`supports(module, name, model, example) -> str | None`: None where the primitive can compress the layer
`name` (the module `module` of `model`), else a one-line reason it cannot. `example` is an input batch
where the caller has one (None otherwise: hooks that need to run the model then say nothing). A layer
whose kind is not in the primitive's `APPLIES_TO` is refused before its hook is asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autocomp.primitives.configs import PrimitiveConfig

SupportsHook = Callable[[Any, str, Any, Any], "str | None"]
SUPPORTS: dict[type[PrimitiveConfig], SupportsHook] = {}


def refusal(config_type: type[PrimitiveConfig], module: Any, name: str, model: Any, example: Any = None, *,
            kind: str | None = None) -> str | None:
    """Why `config_type`'s primitive cannot compress layer `name` of `model` (one line), or None if it can.

    `kind` is the module's layer kind (default: its class name).
    """
    kind = kind or type(module).__name__
    if kind not in config_type.APPLIES_TO:
        return f"applies to {'/'.join(config_type.APPLIES_TO)} layers, not {kind}"
    hook = SUPPORTS.get(config_type)
    if hook is None:
        return None
    try:
        return hook(module, name, model, example)
    except Exception as err:  # a hook that fails must not pass the layer: say why instead
        return f"its coverage check failed: {type(err).__name__}: {err}".splitlines()[0]

