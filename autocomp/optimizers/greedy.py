"""Greedy per-layer sensitivity (AIMET's greedy compression-ratio selection), as an ask/tell optimizer.

1. reference: every knob at its least compressive value;
2. sensitivity: each knob alone moved through its grid (the others at reference): one measured curve of
   objective changes per knob and layer;
3. selection: for a tolerance t on the first objective, each knob takes its most rewarding value (largest
   sum of normalised gains in the other objectives) whose own loss in the first objective is at most t.
   Losses add up across knobs, so t sweeps from zero to the largest loss seen; with `target`, the first
   combined candidate asked is the smallest t whose predicted second objective reaches `target` x the
   reference (e.g. 0.1 = a tenth of the reference size).

It runs out of candidates after the sweep (the runner then stops early); its front can seed Optuna or
DEAP through their `initial` setting (`autocomp search ... --seed-from runs/GREEDY_RUN`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from autocomp.optimizers.base import Optimizer, Params, SearchContext, Told
from autocomp.space import BoundSpace


def sensitivity_queue(space: BoundSpace, levels: int, seed: int) -> tuple[Params, list[Params]]:
    """The candidates of a sensitivity phase: the reference, then each knob alone moved through its grid.

    Knobs that are names (`compresses == 0`, no "more compressive") stay at the reference.

    Args:
        space: The bound space searched.
        levels: At most this many values of each knob's grid besides the reference one, evenly spread.
        seed: Orders the one-knob moves (the measurements, and so what is built from them, are the same).

    Returns:
        The reference (every knob at its least compressive value) and the queue to ask: the reference
        first, then the one-knob moves in seeded order.
    """
    reference = {p.name: p.least_compressive() for p in space.params}
    moves: list[Params] = []
    for p in space.params:
        if p.compresses:
            values = p.ordered()
            picks = np.unique(np.round(np.linspace(1, len(values) - 1, min(levels, len(values) - 1))))
            moves += [{**reference, p.name: values[int(i)]} for i in picks if len(values) > 1]
    order = np.random.default_rng(seed).permutation(len(moves))
    return reference, [dict(reference)] + [moves[i] for i in order]


class SensitivitySearch(Optimizer):
    """Measure each knob alone (the sensitivity phase), then ask candidates built from those measurements.

    The shared machinery of `greedy` and `knapsack`: subclasses build the second phase's candidates in
    `_combinations`, called once, when every sensitivity point has been told. After them the optimizer has
    nothing more to ask (the runner then stops early).
    """

    def __init__(self, space: BoundSpace, *, directions: Sequence[str], seed: int = 0,
                 context: SearchContext | None = None, levels: int = 10) -> None:
        super().__init__(space, directions=directions, seed=seed, context=context)
        self.levels = levels
        self.reference, self.queue = sensitivity_queue(space, levels, seed)
        self.measured: list[tuple[Params, list[float] | None]] = []
        self.phase = "sensitivity"
        self.outstanding = 0

    def ask(self, n: int) -> list[Params]:
        """Next sensitivity points; once all are told, the combined candidates (then none)."""
        if not self.queue and self.phase == "sensitivity" and self.outstanding == 0:
            self.queue = self._combinations()
            self.phase = "combined"
        picks, self.queue = self.queue[:n], self.queue[n:]
        self.outstanding += len(picks)
        return picks

    def tell(self, results: Sequence[Told]) -> None:
        """Record the sensitivity measurements; results of combined candidates are not needed."""
        for told in results:
            self.outstanding = max(0, self.outstanding - 1)
            if self.phase == "sensitivity":
                self.measured.append((dict(told.params), list(told.values) if told.values is not None else None))

    @abstractmethod
    def _combinations(self) -> list[Params]:
        """The second phase's candidates, from `self.measured` (every sensitivity point told)."""

    def _signed(self, values: Sequence[float]) -> np.ndarray:
        """Objective values with maximize positive, so larger is always better."""
        return np.array([v if d == "maximize" else -v for v, d in zip(values, self.directions)])

    def one_knob_moves(self) -> tuple[list[float] | None, list[tuple[str, Any, list[float]]]]:
        """The measured reference and the measured one-knob moves.

        Returns:
            The reference's objective values (None when it failed: nothing to measure against) and, in the
            order told, (param name, value, objective values) of each one-knob move that did not fail.
        """
        ref = next((v for p, v in self.measured if p == self.reference and v is not None), None)
        moves = []
        for params, values in self.measured:
            changed = [k for k in params if params[k] != self.reference[k]]
            if len(changed) != 1 or values is None:  # a failed setting is never chosen
                continue
            moves.append((changed[0], params[changed[0]], values))
        return ref, moves

    def state_dict(self) -> dict[str, Any]:
        """The queue, the measurements so far, the phase and how many asks are outstanding."""
        return {"queue": self.queue, "measured": self.measured, "phase": self.phase,
                "outstanding": self.outstanding}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.queue = [dict(p) for p in state["queue"]]
        self.measured = [(dict(p), v) for p, v in state["measured"]]
        self.phase = state["phase"]
        self.outstanding = int(state["outstanding"])


class GreedySensitivity(SensitivitySearch):
    """Measure each knob alone, then combine the knobs' best values at a sweep of loss tolerances."""

    name = "greedy"
    SETTINGS = {"levels": int, "sweep": int, "target": float}

    def __init__(self, space, *, directions, seed=0, context=None, levels: int = 10, sweep: int = 30,
                 target: float | None = None) -> None:
        if levels < 2 or sweep < 1:
            raise ValueError("levels must be at least 2 and sweep at least 1")
        super().__init__(space, directions=directions, seed=seed, context=context, levels=levels)
        self.sweep, self.target = sweep, target

    def _combinations(self) -> list[Params]:
        ref, measured = self.one_knob_moves()
        if ref is None:
            return []  # the reference failed: nothing to measure sensitivities against
        base = self._signed(ref)
        scale = np.maximum(np.abs(base), 1e-12)
        moves: dict[str, list[tuple[Any, float, float]]] = {}  # param -> (value, loss, gain)
        for name, value, values in measured:
            delta = (self._signed(values) - base) / scale
            loss = max(0.0, -float(delta[0]))
            gain = float(delta[1:].sum()) if len(delta) > 1 else float(delta[0])
            moves.setdefault(name, []).append((value, loss, gain))
        if len(self.directions) == 1:  # one objective: each knob at its own best value
            best = {k: max(v, key=lambda m: m[2]) for k, v in moves.items()}
            return [{**self.reference, **{k: m[0] for k, m in best.items() if m[2] > 0}}]
        losses = sorted({m[1] for v in moves.values() for m in v}) or [0.0]
        tolerances = [0.0] + [float(t) for t in np.quantile(losses, np.linspace(0, 1, self.sweep))]
        out: list[Params] = []
        scored: list[tuple[float, Params, float]] = []
        for t in sorted(set(tolerances)):
            candidate, predicted = dict(self.reference), 0.0
            for k, options in moves.items():
                allowed = [m for m in options if m[1] <= t and m[2] > 0]
                if allowed:
                    pick = max(allowed, key=lambda m: m[2])
                    candidate[k] = pick[0]
                    predicted += pick[2]
            if candidate not in out:
                out.append(candidate)
                scored.append((t, candidate, predicted))
        if self.target is not None and len(self.directions) > 1:
            # predicted second objective relative to the reference: 1 - summed relative gains
            meets = [c for t, c, g in scored if 1.0 - g <= self.target]
            if meets:
                out.remove(meets[0])
                out.insert(0, meets[0])
        return out
