"""Uniform policies: one setting of each knob for every layer, swept over a grid in a seeded order.

This is the hand-tuning baseline ("prune every layer 80%, 4 bits everywhere") that a per-layer
search has to beat at the same budget.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from autocomp.optimizers.base import Optimizer, Params


class UniformSweep(Optimizer):
    """The grid of uniform settings (one value per knob, every layer), asked in a seeded random order."""

    name = "uniform"
    SETTINGS = {"levels": int}

    def __init__(self, space, *, directions, seed=0, context=None, levels: int = 10) -> None:
        super().__init__(space, directions=directions, seed=seed, context=context)
        knobs = space.knobs()
        self.knob_names = sorted(knobs)
        # each knob's grid comes from its first layer's domain; other layers snap to their nearest value
        grids = [knobs[k][0].domain.grid(levels) for k in self.knob_names]
        self.grid = list(itertools.product(*grids))
        self.order = np.random.default_rng(seed).permutation(len(self.grid)).tolist()
        self.position = 0

    def ask(self, n: int) -> list[Params]:
        """The next `n` grid points, each knob's value snapped to every layer's own domain."""
        picks = self.order[self.position : self.position + n]
        self.position += len(picks)
        return [self._expand(self.grid[i]) for i in picks]

    def _expand(self, setting: tuple[Any, ...]) -> Params:
        chosen = dict(zip(self.knob_names, setting))
        return {p.name: p.domain.nearest(chosen[p.knob]) for p in self.space.params}

    def state_dict(self) -> dict[str, Any]:
        """How far through the grid's order the sweep is."""
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the sweep from the saved position."""
        self.position = int(state["position"])
