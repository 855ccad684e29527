"""Search strategies behind one ask/tell interface.

Optimizers are imported when first used (Optuna, DEAP and stable-baselines3 take seconds to import).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from autocomp.errors import AutocompError
from autocomp.optimizers.base import Context, LayerProfile, Optimizer, Params, Told
from autocomp.space.space import BoundSpace

OPTIMIZERS: dict[str, str] = {
    "random": "autocomp.optimizers.random:RandomSearch",
    "uniform": "autocomp.optimizers.uniform:UniformSweep",
    "greedy": "autocomp.optimizers.greedy:GreedySensitivity",
    "tpe": "autocomp.optimizers.bayesian:OptunaSearch",
    "gp": "autocomp.optimizers.bayesian:GPSearch",
    "optuna-nsga2": "autocomp.optimizers.bayesian:OptunaNSGA2",
    "nsga2": "autocomp.optimizers.evolution:EvolutionSearch",
    "ga": "autocomp.optimizers.evolution:GeneticSearch",
    "rl": "autocomp.optimizers.rl.agent:RLSearch",
}


def optimizer_class(name: str) -> type[Optimizer]:
    if name not in OPTIMIZERS:
        raise AutocompError(f"unknown optimizer '{name}'; known: {', '.join(sorted(OPTIMIZERS))}")
    module, attr = OPTIMIZERS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def check_settings(name: str, settings: Mapping[str, Any]) -> None:
    """Unknown or mistyped settings are the user's error, named with the value (before anything runs)."""
    allowed = optimizer_class(name).SETTINGS
    for key, value in settings.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise AutocompError(f"optimizer '{name}' has no setting '{key}' (its settings: {known})")
        kinds = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
        if float in kinds and isinstance(value, int):
            kinds = (*kinds, int)  # 1 is a fine float
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            want = " or ".join(k.__name__ for k in (allowed[key] if isinstance(allowed[key], tuple)
                                                     else (allowed[key],)))
            raise AutocompError(f"optimizer '{name}' setting '{key}' must be {want}, not {value!r}")


def make_optimizer(
    name: str, space: BoundSpace, *, directions: Sequence[str], seed: int, context: Context | None = None,
    **settings: Any,
) -> Optimizer:
    check_settings(name, settings)
    try:
        return optimizer_class(name)(space, directions=directions, seed=seed, context=context, **settings)
    except ValueError as err:  # a setting out of range, or objectives the optimizer cannot use
        raise AutocompError(f"optimizer '{name}': {err}") from err


__all__ = ["OPTIMIZERS", "Context", "LayerProfile", "Optimizer", "Params", "Told", "check_settings",
           "make_optimizer", "optimizer_class"]
