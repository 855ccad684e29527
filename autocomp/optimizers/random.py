"""Random search: every parameter drawn independently. The baseline every optimizer must beat."""

from __future__ import annotations

from typing import Any

import numpy as np

from autocomp.optimizers.base import Optimizer, Params


class RandomSearch(Optimizer):
    """Every parameter drawn independently from its domain, with a seeded generator."""

    name = "random"

    def __init__(self, space, *, directions, seed=0, context=None) -> None:
        super().__init__(space, directions=directions, seed=seed, context=context)
        self.rng = np.random.default_rng(seed)

    def ask(self, n: int) -> list[Params]:
        """`n` independent random samples of the space."""
        return [self.space.sample(self.rng) for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        """The generator's state."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generator's state, so the next asks continue the same sequence."""
        self.rng.bit_generator.state = state["rng"]
