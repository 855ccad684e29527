"""Guided joint search: start from the knapsack allocator's solutions, screen asks with an additive surrogate.

What `guided: true` adds to `tpe` (and the other Optuna samplers), `nsga2`/`ga` and `rl`:

1. start: the knapsack allocator (`autocomp.optimizers.knapsack`) runs first: the sensitivity phase (each
   knob alone; reused from a cached `sensitivity.json` when one matches) and its allocations across a budget
   sweep. Every one of these is a real evaluation; the host optimizer is told them all, so TPE models from
   them instead of random start-up trials and NSGA-II breeds its first generation from them. With
   `sensitivity: fisher` there is no sensitivity phase: the runner's gradient proxies (autocomp/proxies.py)
   predict each knob's change, and only the reference and the allocations are evaluated;
2. screening: afterwards each candidate the host proposes gets a predicted objective vector: the reference
   plus each knob's measured one-knob change (interpolated along the knob's grid between measured values),
   corrected by a ridge regression refitted on every real evaluation so far (features: the per-knob
   changes, the square of their sum, where layer errors compound, and per layer the products of its
   knobs' changes, since a layer's size multiplies its knobs' factors). With proxies, a knob's change in
   the first objective is its Fisher loss times one factor fitted on the measurements so far. Only a candidate predicted
   non-dominated by the measured front, within the surrogate's own median error so far, is asked for real;
   the others are told to the host with their predicted values (marked as predicted where the host keeps
   trials) and counted as screened out. After `tries` rejections in a row one is asked anyway, so a search
   never stalls;
3. record: the prediction made when each candidate was asked, beside what was then measured, goes to
   `surrogate.json` in the run directory (with the median and p90 error per objective): how far the
   allocator's additivity holds on this model.

The state (allocator, measurements, predictions, counts) is part of the host's `state_dict`, so a resumed
run screens exactly as the uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autocomp.optimizers.base import Params, SearchContext, Told
from autocomp.optimizers.greedy import FISHER
from autocomp.optimizers.knapsack import KnapsackAllocation
from autocomp.pareto import dominates
from autocomp.space import BoundSpace

SURROGATE_FILE = "surrogate.json"
# the settings every guided host accepts, beside its own
GUIDE_SETTINGS: dict[str, type | tuple[type, ...]] = {"guided": bool, "levels": int, "sweep": int, "tries": int,
                                                      "screen": bool, "sensitivity": str}


def key(params: Params) -> str:
    """A stable text identity of a candidate (JSON with sorted keys)."""
    return json.dumps(params, sort_keys=True)


class AdditiveSurrogate:
    """Objectives predicted as the reference plus per-knob measured changes, with a ridge correction.

    Args:
        space: The bound space.
        reference: The reference candidate (every knob least compressive).
        ref_values: Its measured objective values.
        moves: (param name, value, objective values) of each measured one-knob move.
        alpha: Ridge penalty of the correction, on standardised features.
    """

    def __init__(self, space: BoundSpace, reference: Params, ref_values: Sequence[float],
                 moves: Sequence[tuple[str, Any, Sequence[float]]], alpha: float = 1.0) -> None:
        self.space, self.reference, self.alpha = space, dict(reference), alpha
        self.ref = np.asarray(ref_values, dtype=float)
        found: dict[str, dict[Any, list[np.ndarray]]] = {}
        for name, value, values in moves:
            found.setdefault(name, {}).setdefault(value, []).append(np.asarray(values, dtype=float) - self.ref)
        # per param: positions along its ordered grid and the mean measured change at each (the reference's is 0)
        self.curves: dict[str, tuple[list[Any], np.ndarray, np.ndarray]] = {}
        for p in space.params:
            if p.name not in found:
                continue
            order = p.ordered()
            values = [p.least_compressive()] + [v for v in found[p.name] if v != p.least_compressive()]
            xs = np.array([self._position(p.name, order, v) for v in values], dtype=float)
            ys = np.array([np.zeros_like(self.ref)] + [np.mean(found[p.name][v], axis=0) for v in values[1:]])
            idx = np.argsort(xs, kind="stable")
            self.curves[p.name] = (order, xs[idx], ys[idx])
        self.names = list(self.curves)
        # knobs of one layer interact (a layer's size is a product of its knobs' factors): per layer, the
        # products of its knobs' changes are features of the correction
        owners: dict[str, list[int]] = {}
        by_name = {p.name: p for p in space.params}
        for i, name in enumerate(self.names):
            owners.setdefault(name[: -len(by_name[name].knob) - 1], []).append(i)
        self.pairs = [(a, b) for idx in owners.values() for k, a in enumerate(idx) for b in idx[k + 1:]]
        self.pair_owner = [next(o for o, idx in owners.items() if a in idx) for a, _ in self.pairs]
        self.owners = list(owners)
        self.coef: np.ndarray | None = None  # (features + 1, objectives) once fitted
        self.mean = self.std = None

    @staticmethod
    def _position(name: str, order: list[Any], value: Any) -> float:
        """Where `value` lies along a knob's grid: its number if numeric, else its index in the order."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return float(order.index(value)) if value in order else 0.0

    def terms(self, params: Params) -> np.ndarray:
        """Each knob's predicted change of every objective: shape (knobs, objectives)."""
        out = np.zeros((len(self.names), self.ref.size))
        for i, name in enumerate(self.names):
            order, xs, ys = self.curves[name]
            x = self._position(name, order, params.get(name, self.reference[name]))
            out[i] = [np.interp(x, xs, ys[:, j]) for j in range(self.ref.size)]
        return out

    def additive(self, params: Params) -> np.ndarray:
        """The additive prediction: the reference plus every knob's change."""
        return self.ref + self.terms(params).sum(axis=0)

    def _features(self, params: Params) -> np.ndarray:
        t = self.terms(params)  # (knobs, objectives)
        total = t.sum(axis=0)
        within = np.zeros((len(self.owners), self.ref.size))
        for (a, b), owner in zip(self.pairs, self.pair_owner):
            within[self.owners.index(owner)] += t[a] * t[b]
        return np.concatenate([t.reshape(-1), total**2, within.reshape(-1)])

    def fit(self, data: Sequence[tuple[Params, Sequence[float]]]) -> None:
        """Refit the correction on measured (params, values): ridge on the additive prediction's residuals."""
        if len(data) < 3:
            self.coef = None
            return
        x = np.array([self._features(p) for p, _ in data])
        y = np.array([np.asarray(v, dtype=float) - self.additive(p) for p, v in data])
        self.mean, self.std = x.mean(axis=0), x.std(axis=0)
        self.std[self.std == 0] = 1.0
        z = np.hstack([(x - self.mean) / self.std, np.ones((len(x), 1))])
        ridge = np.sqrt(self.alpha) * np.eye(z.shape[1])
        ridge[-1, -1] = 0.0  # the intercept is not pulled towards zero
        scale = np.abs(y).max(axis=0)
        scale[scale == 0] = 1.0
        ys = np.vstack([y / scale, np.zeros((z.shape[1], y.shape[1]))])
        self.coef = np.linalg.lstsq(np.vstack([z, ridge]), ys, rcond=None)[0] * scale

    def predict(self, params: Params) -> np.ndarray:
        """The corrected prediction of every objective (the additive one before any fit)."""
        base = self.additive(params)
        if self.coef is None:
            return base
        z = np.append((self._features(params) - self.mean) / self.std, 1.0)
        return base + z @ self.coef


class Guide:
    """The guided start and the surrogate screen, driven by a host optimizer (see the module docstring).

    Args:
        space: The bound space.
        directions: The objectives' directions (two at least: the allocator budgets the second).
        seed: Seeds the allocator's order of measurements.
        context: The run's context (its workdir holds sensitivity.json and surrogate.json).
        levels: Values measured per knob in the sensitivity phase.
        sweep: Budgets the allocator sweeps.
        tries: Candidates screened out in a row before one is asked anyway.
        screen: False: only the guided start, every later candidate asked for real.
        sensitivity: A sensitivity.json (or run directory) to reuse.
    """

    def __init__(self, space: BoundSpace, *, directions: Sequence[str], seed: int, context: SearchContext,
                 levels: int = 4, sweep: int = 12, tries: int = 20, screen: bool = True,
                 sensitivity: str | None = None) -> None:
        if tries < 1:
            raise ValueError("tries must be at least 1")
        self.space, self.directions, self.context = space, tuple(directions), context
        self.allocator = KnapsackAllocation(space, directions=directions, seed=seed, context=context, levels=levels,
                                            sweep=sweep, sensitivity=sensitivity)
        self.tries, self.screen = tries, screen
        self.phase = "start"  # "start": the allocator asks; "search": the host asks, screened
        self.measured: list[tuple[Params, list[float]]] = []  # every real result with values, in told order
        self.predictions: dict[str, dict[str, Any]] = {}  # asked for real, not yet told: key -> prediction
        self.records: list[dict[str, Any]] = []  # predicted vs measured for each real evaluation after the start
        self.counts = {"proposed": 0, "screened": 0, "forced": 0, "asked": 0}
        self._surrogate: AdditiveSurrogate | None = None
        self._fitted = -1

    # -- the start ------------------------------------------------------------------------------------------
    def start_ask(self, n: int) -> list[Params]:
        """The allocator's next asks; none (and the search phase begins) once it has no more."""
        picks = self.allocator.ask(n)
        if not picks and not self.allocator.queue and self.allocator.phase == "combined":
            self.phase = "search"
        return picks

    def start_points(self) -> list[tuple[Params, list[float] | None]]:
        """Every real result so far (sensitivity points and allocations): what the host starts from."""
        return [(dict(p), v) for p, v in self.allocator.measured] + [
            (dict(p), list(v)) for p, v in self.measured if not any(p == q for q, _ in self.allocator.measured)]

    def allocations(self) -> list[Params]:
        """The allocator's solutions, loosest budget first."""
        return [dict(e["params"]) for e in self.allocator.plan]

    def tell(self, results: Sequence[Told]) -> None:
        """Record real results (and the prediction each was asked with)."""
        if self.phase == "start":
            self.allocator.tell(results)
        for told in results:
            if told.values is not None and told.violation <= 0:  # the front and the fit: feasible results
                self.measured.append((dict(told.params), [float(v) for v in told.values]))
            pred = self.predictions.pop(key(told.params), None)
            if pred is not None:
                self.records.append({**pred, "measured": None if told.values is None else list(told.values),
                                     "violation": told.violation})
        if results and self.phase == "search":
            self.save()

    # -- the surrogate --------------------------------------------------------------------------------------
    def surrogate(self) -> AdditiveSurrogate | None:
        """The surrogate refitted on every real result so far (None without a measured reference)."""
        if self.allocator.source == FISHER and self._fitted != len(self.measured):
            self._surrogate = None  # the proxies' factor is refitted on every new measurement
        if self._surrogate is None:
            if self.allocator.source == FISHER:
                ref, moves = self.allocator.proxy_moves(self.measured)
            else:
                ref, moves = self.allocator.one_knob_moves()
            if ref is None:
                return None
            self._surrogate = AdditiveSurrogate(self.space, self.allocator.reference, ref, moves)
        if self._fitted != len(self.measured):
            self._surrogate.fit(self.measured)
            self._fitted = len(self.measured)
        return self._surrogate

    def _margin(self) -> np.ndarray:
        """The surrogate's median absolute error so far, per objective (0 before any record)."""
        errors = [np.abs(np.subtract(r["predicted"], r["measured"])) for r in self.records if r["measured"]]
        return np.median(errors, axis=0) if errors else np.zeros(len(self.directions))

    def _promising(self, predicted: np.ndarray) -> bool:
        """Not dominated by the measured front, with the prediction moved optimistically by the margin."""
        sign = np.array([1.0 if d == "maximize" else -1.0 for d in self.directions])
        optimistic = predicted + sign * self._margin()
        point = tuple(float(v) for v in optimistic)
        return not any(dominates(tuple(v), point, self.directions) for _, v in self.measured)

    def ask(self, n: int, ask: Callable[[int], list[Params]], reject: Callable[[Params, list[float]], None], *,
            on_start: Callable[[list[Params]], None] | None = None,
            on_started: Callable[[], None] | None = None) -> list[Params]:
        """A guided host's ask: the allocator's start first, then the host's own candidates, screened.

        Args:
            n: How many candidates to ask for.
            ask: The host's own ask (`n` -> candidates).
            reject: Tells the host a screened-out candidate with its predicted objectives.
            on_start: Called with the start's picks (RL replays them as episodes).
            on_started: Called once when the start is over (evolution breeds from its points).

        Returns:
            Up to `n` candidates to evaluate for real.
        """
        if self.phase == "start":
            picks = self.start_ask(n)
            if picks or self.phase == "start":
                if on_start is not None:
                    on_start(picks)
                return picks
            if on_started is not None:
                on_started()
        return self.screen_ask(n, ask, reject)

    def screen_ask(self, n: int, ask: Callable[[int], list[Params]],
                   reject: Callable[[Params, list[float]], None]) -> list[Params]:
        """Up to `n` host candidates predicted non-dominated; the others are told `reject`ed with predictions.

        Args:
            n: How many to ask for real.
            ask: The host's own ask.
            reject: Tells the host a screened-out candidate with its predicted values.

        Returns:
            The candidates to evaluate for real.
        """
        model = self.surrogate()
        out: list[Params] = []
        rejected = 0
        while len(out) < n:
            picks = ask(1)
            if not picks:
                break  # the host waits (a generation is still out)
            candidate = picks[0]
            self.counts["proposed"] += 1
            if model is None:
                out.append(candidate)
                continue
            predicted = model.predict(candidate)
            promising = not self.screen or self._promising(predicted)
            if not promising and rejected + 1 < self.tries:
                rejected += 1
                self.counts["screened"] += 1
                reject(candidate, [float(v) for v in predicted])
                continue
            if not promising:
                self.counts["forced"] += 1
            rejected = 0
            self.counts["asked"] += 1
            self.predictions[key(candidate)] = {"params": candidate, "additive": model.additive(candidate).tolist(),
                                                "predicted": predicted.tolist(), "screened_in": bool(promising)}
            out.append(candidate)
        return out

    # -- record and state -----------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Counts, the share screened out, and the median/p90 error per objective (absolute and relative)."""
        rows = [r for r in self.records if r["measured"]]
        out: dict[str, Any] = {**self.counts, "evaluated": len(rows),
                               "screened_share": self.counts["screened"] / max(self.counts["proposed"], 1)}
        for what, field in (("error", "predicted"), ("additive_error", "additive")):
            if rows:
                err = np.array([np.abs(np.subtract(r[field], r["measured"])) for r in rows])
                rel = err / np.maximum(np.abs([r["measured"] for r in rows]), 1e-12)
                out[what] = {"median": np.median(err, axis=0).tolist(), "p90": np.quantile(err, 0.9, axis=0).tolist(),
                             "relative_median": np.median(rel, axis=0).tolist(),
                             "relative_p90": np.quantile(rel, 0.9, axis=0).tolist()}
        return out

    def save(self) -> None:
        """Write surrogate.json (summary and every record) to the run directory, if there is one."""
        if not self.context.workdir:
            return
        folder = Path(self.context.workdir)
        tmp = folder / (SURROGATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"directions": list(self.directions), "summary": self.summary(),
                                   "records": self.records}, indent=1) + "\n")
        os.replace(tmp, folder / SURROGATE_FILE)

    def state_dict(self) -> dict[str, Any]:
        """JSON state: the allocator's, the phase, measurements, pending predictions, records and counts."""
        return json.loads(json.dumps({
            "allocator": self.allocator.state_dict(), "phase": self.phase, "measured": self.measured,
            "predictions": self.predictions, "records": self.records, "counts": self.counts}))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.allocator.load_state_dict(state["allocator"])
        self.phase = state["phase"]
        self.measured = [(dict(p), list(v)) for p, v in state["measured"]]
        self.predictions = {k: dict(v) for k, v in state["predictions"].items()}
        self.records = [dict(r) for r in state["records"]]
        self.counts = dict(state["counts"])
        self._surrogate, self._fitted = None, -1


def guide_wants_proxies(settings: Mapping[str, Any]) -> bool:
    """Whether a guided host with these settings needs the runner's gradient proxies (`sensitivity: fisher`)."""
    return bool(settings.get("guided")) and settings.get("sensitivity") == FISHER


def make_guide(host: Any, settings: dict[str, Any]) -> Guide | None:
    """The host's Guide when `settings["guided"]`, else None (other guide settings then are an error).

    Raises:
        ValueError: A guide setting without `guided: true`, or fewer than two objectives.
    """
    guided = settings.pop("guided", False)
    extra = {k: settings.pop(k) for k in list(settings) if k in GUIDE_SETTINGS}
    if settings:
        raise TypeError(f"unexpected settings: {', '.join(sorted(settings))}")
    if not guided:
        if extra:
            raise ValueError(f"{', '.join(sorted(extra))} only apply with guided: true")
        return None
    if len(host.directions) < 2:
        raise ValueError("guided needs two objectives: the allocator budgets the second")
    return Guide(host.space, directions=host.directions, seed=host.seed, context=host.context, **extra)
