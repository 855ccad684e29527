"""Search strategies behind one ask/tell interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autocomp.errors import AutocompError
from autocomp.optimizers.base import Optimizer, Params, Told
from autocomp.optimizers.random import RandomSearch
from autocomp.optimizers.uniform import UniformSweep
from autocomp.space.space import BoundSpace

OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (RandomSearch, UniformSweep)}


def make_optimizer(
    name: str, space: BoundSpace, *, directions: Sequence[str], seed: int, **settings: Any
) -> Optimizer:
    if name not in OPTIMIZERS:
        raise AutocompError(f"unknown optimizer '{name}'; known: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name](space, directions=directions, seed=seed, **settings)


__all__ = ["OPTIMIZERS", "Optimizer", "Params", "RandomSearch", "Told", "UniformSweep", "make_optimizer"]
