"""The optimizer interface: ask for candidates, tell their results, save and restore state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autocomp.space import BoundSpace

Params = dict[str, Any]


@dataclass(frozen=True)
class Told:
    """One finished trial as an optimizer sees it: values is None for a failed trial."""

    params: Params
    values: tuple[float, ...] | None
    violation: float = 0.0


@dataclass(frozen=True)
class LayerProfile:
    """What an optimizer may know of one compressible layer (numbers only, never the module itself)."""

    name: str
    kind: str  # "Linear" or "Conv2d"
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    params: int = 0
    flops: int = 0


@dataclass(frozen=True)
class SearchContext:
    """What the runner tells an optimizer about the search beyond the space.

    `layers`: profiles of the compressible layers, in forward order (RL observations, cost estimates).
    `workdir`: the run directory, for optimizers that keep files of their own there (Optuna's study).
    """

    layers: tuple[LayerProfile, ...] = ()
    workdir: str | None = None


class Optimizer(ABC):
    """Ask/tell search over a bound space. Sees parameters and scores only, never models.

    Subclasses declare their YAML/CLI settings in SETTINGS (name -> type) with defaults in __init__.
    """

    name: str = ""
    SETTINGS: dict[str, type | tuple[type, ...]] = {}

    def __init__(self, space: BoundSpace, *, directions: Sequence[str], seed: int = 0,
                 context: SearchContext | None = None) -> None:
        self.space = space
        self.directions = tuple(directions)
        self.seed = seed
        self.context = context or SearchContext()

    @abstractmethod
    def ask(self, n: int) -> list[Params]:
        """Up to `n` new candidates; fewer (or none) when the optimizer has nothing left to propose."""

    def tell(self, results: Sequence[Told]) -> None:  # noqa: B027 - stateless optimizers ignore results
        """Results of earlier asks, in any order."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state from which `load_state_dict` continues identically."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`, after which the optimizer continues as the saved one would have."""
