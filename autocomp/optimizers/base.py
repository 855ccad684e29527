"""The optimizer interface: ask for candidates, tell their results, save and restore state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autocomp.space.space import BoundSpace

Params = dict[str, Any]


@dataclass(frozen=True)
class Told:
    """One finished trial as an optimizer sees it: values is None for a failed trial."""

    params: Params
    values: tuple[float, ...] | None
    violation: float = 0.0


class Optimizer(ABC):
    """Ask/tell search over a bound space. Sees parameters and scores only, never models."""

    name: str = ""

    def __init__(self, space: BoundSpace, *, directions: Sequence[str], seed: int = 0) -> None:
        self.space = space
        self.directions = tuple(directions)
        self.seed = seed

    @abstractmethod
    def ask(self, n: int) -> list[Params]:
        """Up to `n` new candidates; fewer (or none) when the optimizer has nothing left to propose."""

    def tell(self, results: Sequence[Told]) -> None:  # noqa: B027 - stateless optimizers ignore results
        """Results of earlier asks, in any order."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state from which `load_state_dict` continues identically."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
