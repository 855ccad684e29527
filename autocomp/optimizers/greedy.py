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

from typing import Any

import numpy as np

from autocomp.optimizers.base import Optimizer, Params, Told


class GreedySensitivity(Optimizer):
    name = "greedy"
    SETTINGS = {"levels": int, "sweep": int, "target": float}

    def __init__(self, space, *, directions, seed=0, context=None, levels: int = 10, sweep: int = 30,
                 target: float | None = None) -> None:
        super().__init__(space, directions=directions, seed=seed, context=context)
        if levels < 2 or sweep < 1:
            raise ValueError("levels must be at least 2 and sweep at least 1")
        self.levels, self.sweep, self.target = levels, sweep, target
        self.reference = {p.name: p.least_compressive() for p in space.params}
        self.queue: list[Params] = [dict(self.reference)]
        # one-knob moves, in the space's order; knobs that are names (no "more compressive") stay put
        for p in space.params:
            if p.compresses:
                values = p.ordered()
                picks = np.unique(np.round(np.linspace(1, len(values) - 1, min(levels, len(values) - 1))))
                self.queue += [{**self.reference, p.name: values[int(i)]} for i in picks if len(values) > 1]
        # the seed only orders the one-knob moves (the measurements, and so the result, are the same)
        moves = self.queue[1:]
        order = np.random.default_rng(seed).permutation(len(moves))
        self.queue = [self.queue[0]] + [moves[i] for i in order]
        self.measured: list[tuple[Params, list[float] | None]] = []
        self.phase = "sensitivity"
        self.outstanding = 0

    def ask(self, n: int) -> list[Params]:
        if not self.queue and self.phase == "sensitivity" and self.outstanding == 0:
            self.queue = self._combinations()
            self.phase = "combined"
        picks, self.queue = self.queue[:n], self.queue[n:]
        self.outstanding += len(picks)
        return picks

    def tell(self, results: list[Told]) -> None:
        for told in results:
            self.outstanding = max(0, self.outstanding - 1)
            if self.phase == "sensitivity":
                self.measured.append((dict(told.params), list(told.values) if told.values is not None else None))

    def _signed(self, values: list[float]) -> np.ndarray:
        """Objective values with maximize positive, so larger is always better."""
        return np.array([v if d == "maximize" else -v for v, d in zip(values, self.directions)])

    def _combinations(self) -> list[Params]:
        ref = next((v for p, v in self.measured if p == self.reference and v is not None), None)
        if ref is None:
            return []  # the reference failed: nothing to measure sensitivities against
        base = self._signed(ref)
        scale = np.maximum(np.abs(base), 1e-12)
        moves: dict[str, list[tuple[Any, float, float]]] = {}  # param -> (value, loss, gain)
        for params, values in self.measured:
            changed = [k for k in params if params[k] != self.reference[k]]
            if len(changed) != 1:
                continue
            if values is None:  # a failed setting is never chosen
                continue
            delta = (self._signed(values) - base) / scale
            loss = max(0.0, -float(delta[0]))
            gain = float(delta[1:].sum()) if len(delta) > 1 else float(delta[0])
            moves.setdefault(changed[0], []).append((params[changed[0]], loss, gain))
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

    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "measured": self.measured, "phase": self.phase,
                "outstanding": self.outstanding}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = [dict(p) for p in state["queue"]]
        self.measured = [(dict(p), v) for p, v in state["measured"]]
        self.phase = state["phase"]
        self.outstanding = int(state["outstanding"])
