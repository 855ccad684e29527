"""The optimizer interface: ask for candidates, tell their results, save and restore state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    `objectives`: the objectives' names, in order (what a proxy entry predicts is named by them).
    `proxies`: cheap gradient proxies (autocomp/proxies.py), given only to an optimizer whose
    `wants_proxies(settings)` is true: param name -> repr(value) -> {"loss": the Fisher-predicted loss
    increase with only that value changed, and the change of each metric known without data, e.g.
    "size_bytes"}. `proxy_info`: per layer its Hessian trace ("trace") and weights, and the wall time
    ("seconds") the proxies took.
    """

    layers: tuple[LayerProfile, ...] = ()
    workdir: str | None = None
    objectives: tuple[str, ...] = ()
    proxies: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    proxy_info: Mapping[str, Any] = field(default_factory=dict)


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

    @classmethod
    def wants_proxies(cls, settings: Mapping[str, Any]) -> bool:
        """Whether, with these settings, the runner should compute `SearchContext.proxies` (it costs passes)."""
        return False

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
