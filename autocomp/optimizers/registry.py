"""Optimizers by name, their settings (the run file's `optimizer:`), and how one is built.

Adding an optimizer is one call: `register_optimizer("name", MyOptimizer)` (an `Optimizer` subclass);
`--optimizer name` and `optimizer: {name: ..., <name>: {settings}}` then reach it. The built-in ones are
imported when first used (Optuna, DEAP and stable-baselines3 take seconds to import).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autocomp.errors import AutocompError
from autocomp.optimizers.base import Optimizer, SearchContext
from autocomp.space import BoundSpace

# name -> the class, or "module:Class" for a built-in one not imported yet
OPTIMIZERS: dict[str, type[Optimizer] | str] = {
    "random": "autocomp.optimizers.random:RandomSearch",
    "uniform": "autocomp.optimizers.uniform:UniformSweep",
    "greedy": "autocomp.optimizers.greedy:GreedySensitivity",
    "knapsack": "autocomp.optimizers.knapsack:KnapsackAllocation",
    "tpe": "autocomp.optimizers.bayesian:OptunaSearch",
    "gp": "autocomp.optimizers.bayesian:GPSearch",
    "optuna-nsga2": "autocomp.optimizers.bayesian:OptunaNSGA2",
    "nsga2": "autocomp.optimizers.evolution:EvolutionSearch",
    "ga": "autocomp.optimizers.evolution:GeneticSearch",
    "rl": "autocomp.optimizers.rl.agent:RLSearch",
}


def register_optimizer(name: str, cls: type[Optimizer]) -> type[Optimizer]:
    """Make the Optimizer subclass `cls` available as `name` (its settings are its SETTINGS)."""
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise TypeError(f"register_optimizer: {cls!r} is not an Optimizer subclass")
    OPTIMIZERS[name] = cls
    return cls


# an optimizer named in the registry, or an Optimizer subclass given directly
OptimizerRef = str | type[Optimizer]


def optimizer_name(ref: OptimizerRef) -> str:
    """How run.json and messages name an optimizer: its registered name, or module.Class."""
    return ref if isinstance(ref, str) else f"{ref.__module__}.{ref.__qualname__}"


def optimizer_class(name: OptimizerRef) -> type[Optimizer]:
    """The class registered as `name` (a class is its own)."""
    if isinstance(name, type):
        return name
    if name not in OPTIMIZERS:
        raise AutocompError(f"unknown optimizer '{name}'; known: {', '.join(sorted(OPTIMIZERS))}")
    entry = OPTIMIZERS[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = OPTIMIZERS[name] = getattr(importlib.import_module(module), attr)
    return entry


def check_settings(ref: OptimizerRef, settings: Mapping[str, Any]) -> None:
    """Unknown or mistyped settings are the user's error, named with the value (before anything runs)."""
    allowed, name = optimizer_class(ref).SETTINGS, optimizer_name(ref)
    for key, value in settings.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise AutocompError(f"optimizer '{name}' has no setting '{key}' (its settings: {known})")
        declared = allowed[key]
        wanted: tuple[type, ...] = declared if isinstance(declared, tuple) else (declared,)
        kinds = (*wanted, int) if float in wanted else wanted  # 1 is a fine float
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            want = " or ".join(k.__name__ for k in wanted)
            raise AutocompError(f"optimizer '{name}' setting '{key}' must be {want}, not {value!r}")


def make_optimizer(
    ref: OptimizerRef, space: BoundSpace, *, directions: Sequence[str], seed: int, context: SearchContext | None = None,
    **settings: Any,
) -> Optimizer:
    """The optimizer `ref` names, on `space`, its settings checked first (AutocompError names a bad one)."""
    check_settings(ref, settings)
    name = optimizer_name(ref)
    try:
        return optimizer_class(ref)(space, directions=directions, seed=seed, context=context, **settings)
    except ValueError as err:  # a setting out of range, or objectives the optimizer cannot use
        raise AutocompError(f"optimizer '{name}': {err}") from err




@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """The run file's `optimizer:`: the default optimizer and settings per optimizer name.

    `--optimizer` overrides which optimizer runs by default. The names and settings are checked against the
    optimizers when the search starts; `lines` says where each block was written, for those errors.
    """

    name: str | None = None
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False)
