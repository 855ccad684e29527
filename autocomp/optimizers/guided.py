"""Guided joint search: start from the knapsack allocator's solutions, screen asks with an additive surrogate.

What `guided: true` adds to `tpe` (and the other Optuna samplers), `nsga2`/`ga` and `rl`:

1. start: the knapsack allocator (`autocomp.optimizers.knapsack`) runs first: the sensitivity phase (each
   knob alone; reused from a cached `sensitivity.json` when one matches) and its allocations across a budget
   sweep. Every one of these is a real evaluation; the host optimizer is told them all, so TPE models from
   them instead of random start-up trials and NSGA-II breeds its first generation from them. With
   `sensitivity: fisher` there is no sensitivity phase: the runner's gradient proxies (autocomp/proxies.py)
   predict each knob's change, and only the reference and the allocations are evaluated;
2. screening: afterwards each candidate gets a predicted objective vector: the reference plus each knob's
   measured one-knob change (interpolated along the knob's grid between measured values), with costs
   (minimised, positive objectives: bytes, FLOPs, latency, perplexity) in log space, where a layer's bits,
   pruning and rank multiply its bytes; corrected by a ridge regression refitted on every real evaluation
   so far (features: the per-knob changes, the square of their sum, where layer errors compound, and per
   layer the products of its knobs' changes; the penalty chosen per objective by leave-one-out), and what
   the ridge leaves modelled by a Gaussian process on the per-knob changes, which also gives each
   prediction its uncertainty. With proxies, a knob's change in the first objective is its Fisher loss
   times one factor fitted on the measurements so far. For each real evaluation a pool is scored: `pool`
   candidates of the host and `local` neighbours of the measured front (one or two knobs moved along their
   grid). The one whose prediction, moved optimistically by one standard deviation, adds the most
   hypervolume to the measured front (and the pending asks) is asked for real; the host's others are told to it with
   their predicted values (marked as predicted where the host keeps trials) and counted as screened out.
   A pool where nothing is predicted to add any is screened out whole; after `tries` host candidates
   screened out in a row one is asked anyway, so a search never stalls;
3. record: the prediction made when each candidate was asked, beside what was then measured, goes to
   `surrogate.json` in the run directory (with the median and p90 error per objective): how far the
   allocator's additivity holds on this model.

The state (allocator, measurements, predictions, counts) is part of the host's `state_dict`, so a resumed
run screens exactly as the uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autocomp.optimizers.base import Params, SearchContext, Told
from autocomp.optimizers.greedy import FISHER
from autocomp.optimizers.knapsack import KnapsackAllocation
from autocomp.pareto import hypervolume, pareto_front
from autocomp.space import BoundSpace

SURROGATE_FILE = "surrogate.json"
ALPHAS = tuple(float(a) for a in np.logspace(-2, 6, 17))  # the correction's ridge penalties to choose from
# the settings every guided host accepts, beside its own
GUIDE_SETTINGS: dict[str, type | tuple[type, ...]] = {"guided": bool, "levels": int, "sweep": int, "tries": int,
                                                      "screen": bool, "sensitivity": str, "pool": int, "local": int,
                                                      "reference": list}


def key(params: Params) -> str:
    """A stable text identity of a candidate (JSON with sorted keys)."""
    return json.dumps(params, sort_keys=True)


class AdditiveSurrogate:
    """Objectives predicted as the reference plus per-knob measured changes, with a learned correction.

    The correction is a ridge regression and a Gaussian process on what the ridge leaves, which also gives
    each prediction its uncertainty.

    Objectives marked `log` (costs: sizes, FLOPs, latencies, perplexities) are modelled as log10 of their
    value, where the knobs' effects multiply (a layer's bits, pruning and rank each scale its bytes) and so
    add up; `predict` and `additive` still return every objective in its own units.

    Args:
        space: The bound space.
        reference: The reference candidate (every knob least compressive).
        ref_values: Its measured objective values.
        moves: (param name, value, objective values) of each measured one-knob move.
        alphas: Ridge penalties of the correction (on standardised features) to choose from, per objective, by
            leave-one-out error: a large one leaves little more than a constant shift, for objectives where
            the one-knob changes already add up.
        log: Per objective, whether it is modelled in log space (none by default).
    """

    def __init__(self, space: BoundSpace, reference: Params, ref_values: Sequence[float],
                 moves: Sequence[tuple[str, Any, Sequence[float]]], alphas: Sequence[float] = ALPHAS,
                 log: Sequence[bool] = ()) -> None:
        self.space, self.reference, self.alphas = space, dict(reference), tuple(alphas)
        self.log = np.zeros(len(ref_values), dtype=bool)
        self.log[: len(log)] = list(log)
        self.ref = self.to_model(ref_values)
        found: dict[str, dict[Any, list[np.ndarray]]] = {}
        for name, value, values in moves:
            found.setdefault(name, {}).setdefault(value, []).append(self.to_model(values) - self.ref)
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
        self.processes: list[Any] = []  # scikit-learn GaussianProcessRegressor per objective, on the ridge's residuals
        self.knob_features = len(self.names) * self.ref.size  # the first features: the per-knob changes

    def to_model(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """Objective values as the model sees them: log10 where `log` (floored at 1e-12), else as they are."""
        v = np.asarray(values, dtype=float)
        return np.where(self.log, np.log10(np.maximum(v, 1e-12)), v)

    def from_model(self, values: np.ndarray) -> np.ndarray:
        """The inverse of `to_model`."""
        out = np.array(values, dtype=float)
        out[..., self.log] = 10.0 ** out[..., self.log]  # only there: a linear objective may be far above 308
        return out

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

    def _additive(self, params: Params) -> np.ndarray:
        return self.ref + self.terms(params).sum(axis=0)

    def additive(self, params: Params) -> np.ndarray:
        """The additive prediction: the reference plus every knob's change."""
        return self.from_model(self._additive(params))

    def _features(self, params: Params) -> np.ndarray:
        t = self.terms(params)  # (knobs, objectives)
        total = t.sum(axis=0)
        within = np.zeros((len(self.owners), self.ref.size))
        for (a, b), owner in zip(self.pairs, self.pair_owner):
            within[self.owners.index(owner)] += t[a] * t[b]
        return np.concatenate([t.reshape(-1), total**2, within.reshape(-1)])

    def fit(self, data: Sequence[tuple[Params, Sequence[float]]]) -> None:
        """Refit the correction on measured (params, values): ridge on the additive prediction's residuals.

        scikit-learn's RidgeCV picks each objective's penalty by its efficient leave-one-out error, so a
        correction that would only fit noise on a few dozen results is shrunk away instead of overfitting.
        """
        if len(data) < 3:
            self.coef = None
            return
        x = np.array([self._features(p) for p, _ in data])
        y = np.array([self.to_model(v) - self._additive(p) for p, v in data])
        self.mean, self.std = x.mean(axis=0), x.std(axis=0)
        self.std[self.std == 0] = 1.0
        # imported here: every Optuna host imports this module, and only a guided one fits a surrogate
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
        from sklearn.linear_model import RidgeCV

        z = (x - self.mean) / self.std
        ridge = RidgeCV(alphas=self.alphas, alpha_per_target=True).fit(z, y)
        self.coef = np.vstack([ridge.coef_.reshape(y.shape[1], -1).T, np.reshape(ridge.intercept_, (1, -1))])
        # what the ridge leaves, a Gaussian process on the per-knob changes models, with its uncertainty
        residual = y - np.hstack([z, np.ones((len(z), 1))]) @ self.coef
        self.processes = []
        for j in range(y.shape[1] if self.knob_features else 0):
            kernel = ConstantKernel(1.0) * RBF(length_scale=3.0, length_scale_bounds=(0.1, 100.0)) + WhiteKernel(
                1e-3, noise_level_bounds=(1e-8, 1.0))
            process = GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=0)
            with warnings.catch_warnings():  # a bound reached is no error here: the fit is used as it is
                warnings.simplefilter("ignore", ConvergenceWarning)
                process.fit(z[:, : self.knob_features], residual[:, j])
            self.processes.append(process)

    def predict_model(self, params: Params) -> tuple[np.ndarray, np.ndarray | None]:
        """The corrected prediction in the model's space (log10 where `log`), and its standard deviation.

        The deviation is the Gaussian process's (None before the first fit).
        """
        base = self._additive(params)
        if self.coef is None:
            return base, None
        z = np.append((self._features(params) - self.mean) / self.std, 1.0)
        out, std = base + z @ self.coef, np.zeros(self.ref.size)
        for j, process in enumerate(self.processes):
            mean, deviation = process.predict(z[None, : self.knob_features], return_std=True)
            out[j] += mean[0]
            std[j] = deviation[0]
        return out, std

    def predict(self, params: Params) -> np.ndarray:
        """The corrected prediction of every objective (the additive one before any fit)."""
        return self.from_model(self.predict_model(params)[0])


class Guide:
    """The guided start and the surrogate screen, driven by a host optimizer (see the module docstring).

    Args:
        space: The bound space.
        directions: The objectives' directions (two at least: the allocator budgets the second).
        seed: Seeds the allocator's order of measurements.
        context: The run's context (its workdir holds sensitivity.json and surrogate.json).
        levels: Values measured per knob in the sensitivity phase.
        sweep: Budgets the allocator sweeps.
        tries: Host candidates screened out in a row before one is asked anyway (counted per pool, so with
            `pool` p a pool is forced once fewer than p tries are left).
        screen: False: only the guided start, every later candidate asked for real.
        sensitivity: A sensitivity.json (or run directory) to reuse.
        pool: Host candidates drawn for each real evaluation; the surrogate picks among them.
        local: Neighbours of the measured front (one or two knobs moved along their grid) added to each pool.
        reference: Per objective, the worst value worth having (None: no bound): the hypervolume a candidate
            is predicted to add is bounded by it, as in BoTorch's expected hypervolume improvement, so no
            evaluation is spent on models outside the region the user cares about (e.g. `[0.9, null]`:
            accuracy at least 0.9, any size). An objective without one is bounded by its worst known value,
            pushed out by a tenth of the known range.
    """

    def __init__(self, space: BoundSpace, *, directions: Sequence[str], seed: int, context: SearchContext,
                 levels: int = 4, sweep: int = 12, tries: int = 20, screen: bool = True,
                 sensitivity: str | None = None, pool: int = 2, local: int = 32,
                 reference: Sequence[float | None] | None = None) -> None:
        if tries < 1:
            raise ValueError("tries must be at least 1")
        if pool < 1:
            raise ValueError("pool must be at least 1")
        if local < 0:
            raise ValueError("local must be 0 or more")
        reference = list(reference) if reference is not None else [None] * len(directions)
        if len(reference) != len(directions) or not all(
                r is None or (isinstance(r, (int, float)) and not isinstance(r, bool) and np.isfinite(r))
                for r in reference):
            raise ValueError(f"reference must give a number or null for each of the {len(directions)} objectives "
                             f"(got {reference})")
        if any(r is not None and r <= 0 and d == "minimize" for r, d in zip(reference, directions)):
            raise ValueError(f"reference of a minimized objective must be positive (costs are modelled in log "
                             f"space; got {reference})")
        self.reference = reference
        self.seed, self.pool, self.local = seed, pool, local
        self.space, self.directions, self.context = space, tuple(directions), context
        self.allocator = KnapsackAllocation(space, directions=directions, seed=seed, context=context, levels=levels,
                                            sweep=sweep, sensitivity=sensitivity)
        self.tries, self.screen = tries, screen
        self.phase = "start"  # "start": the allocator asks; "search": the host asks, screened
        self.measured: list[tuple[Params, list[float]]] = []  # every feasible real result, in told order
        self.tried: set[str] = set()  # the keys of every told candidate, failed and infeasible ones included
        self.predictions: dict[str, dict[str, Any]] = {}  # asked for real, not yet told: key -> prediction
        self.records: list[dict[str, Any]] = []  # predicted vs measured for each real evaluation after the start
        self.counts = {"proposed": 0, "screened": 0, "forced": 0, "asked": 0, "local": 0}
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
        """The allocator's solutions, loosest budget first (asked in `spread_order`)."""
        return [dict(e["params"]) for e in self.allocator.plan]

    def tell(self, results: Sequence[Told]) -> None:
        """Record real results (and the prediction each was asked with)."""
        if self.phase == "start":
            self.allocator.tell(results)
        for told in results:
            self.tried.add(key(told.params))
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
            self._surrogate = AdditiveSurrogate(self.space, self.allocator.reference, ref, moves,
                                                log=self._costs(ref, [v for _, _, v in moves]))
        elif (self._surrogate.log != self._costs(self._surrogate.from_model(self._surrogate.ref), [])).any():
            self._surrogate = None  # a measured cost was not positive: that objective is modelled linearly
            return self.surrogate()
        if self._fitted != len(self.measured):
            self._surrogate.fit(self.measured)
            self._fitted = len(self.measured)
        return self._surrogate

    def _costs(self, ref: Sequence[float], more: Sequence[Sequence[float]]) -> np.ndarray:
        """Per objective, whether it is a cost modelled in log space: minimised, and every value known positive.

        Bytes, FLOPs, latency and perplexity are; the knobs' effects on them multiply.
        """
        values = [ref, *more, *(v for _, v in self.measured)]
        return np.array([d == "minimize" and all(v[j] > 0 for v in values) for j, d in enumerate(self.directions)])

    def _gains(self, model: AdditiveSurrogate, candidates: Sequence[Params]) -> tuple[list[float], list[np.ndarray]]:
        """The hypervolume each candidate's optimistic prediction adds to what is known, and its prediction.

        Computed in the surrogate's model space (costs in log10: a 2x smaller model is as much of a gain at
        10 kB as at 1 MB). Optimistic: moved towards better by one standard deviation of the surrogate. Known:
        the measured front and the pending asks at their predictions, so parallel asks spread out instead of
        all taking the same gap. The reference is the `reference` setting where it gives one, else the worst
        known value of the objective, pushed out by a tenth of its range.
        """
        sign = np.array([1.0 if d == "maximize" else -1.0 for d in self.directions])
        pending = [model.to_model(r["predicted"]) for r in self.predictions.values()]
        known = np.array([model.to_model(v) for _, v in self.measured] + pending, dtype=float)
        if not len(known):  # nothing feasible measured yet: no front to add to
            return [0.0] * len(candidates), [model.predict(c) for c in candidates]
        points = known[pareto_front(known, self.directions)]
        worst = np.where(sign > 0, known.min(axis=0), known.max(axis=0))
        reference = worst - sign * 0.1 * np.maximum(np.ptp(known, axis=0), 1e-12)
        given = np.array([r is not None for r in self.reference])
        if given.any():
            bound = model.to_model([r if r is not None else 1.0 for r in self.reference])
            reference = np.where(given, bound, reference)
        base = hypervolume(points, reference, self.directions)
        predicted, gains = [], []
        for candidate in candidates:
            mean, std = model.predict_model(candidate)
            optimistic = mean if std is None else mean + sign * std
            gains.append(hypervolume(np.vstack([points, optimistic]), reference, self.directions) - base)
            predicted.append(model.from_model(mean))
        return gains, predicted

    def _neighbours(self, count: int) -> list[Params]:
        """`count` new candidates one or two knobs away (a step along the grid) from measured front points.

        Never one told before (failed and infeasible ones included) or still pending. Drawn with a generator
        seeded by the run's seed, how many host candidates were proposed and how many results measured, so a
        resumed run draws the same ones.
        """
        values = np.array([v for _, v in self.measured], dtype=float)
        front = [self.measured[i][0] for i in pareto_front(values, self.directions)]
        if not front or not count:
            return []
        rng = np.random.default_rng([self.seed, self.counts["proposed"], len(self.measured)])
        seen = self.tried | set(self.predictions)
        out: dict[str, Params] = {}
        for _ in range(4 * count):
            if len(out) == count:
                break
            candidate = dict(front[int(rng.integers(len(front)))])
            for param in rng.choice(self.space.params, size=min(int(rng.integers(1, 3)), len(self.space.params)),
                                    replace=False):
                grid = param.ordered(64)  # a fine grid: every step of a stepped range up to 64
                here = _grid_index(grid, candidate[param.name])
                # a step of up to an eighth of the grid: one value of a short choice, a few of a fine range
                step = int(rng.integers(1, max(1, len(grid) // 8) + 1)) * int(rng.choice([-1, 1]))
                candidate[param.name] = grid[min(max(here + step, 0), len(grid) - 1)]
            k = key(candidate)
            if k not in seen and k not in out and self.space.contains(candidate):
                out[k] = candidate
        return list(out.values())

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
        """Up to `n` candidates, each the best of a pool by predicted hypervolume gain; the host's others rejected.

        Each pool is `pool` host candidates plus `local` neighbours of the measured front. The one whose
        optimistic prediction adds the most hypervolume is asked for real; the host's candidates not picked
        are told back (`reject`) with their predicted values. When nothing in the pool is predicted to add
        any, the pool is screened out, until `tries` host candidates in a row have been; then the host's
        next is asked anyway, so a search never stalls.

        Args:
            n: How many to ask for real.
            ask: The host's own ask.
            reject: Tells the host a screened-out candidate with its predicted values.

        Returns:
            The candidates to evaluate for real.
        """
        model = self.surrogate() if self.screen else None
        out: list[Params] = []
        rejected = 0
        while len(out) < n:
            hosts: list[Params] = []
            for _ in range(self.pool if model is not None else 1):
                picks = ask(1)
                if not picks:
                    break  # the host waits (a generation is still out)
                hosts.append(picks[0])
            if not hosts:
                break
            self.counts["proposed"] += len(hosts)
            if model is None:  # not screening, or nothing to predict with yet
                out += hosts
                self.counts["asked"] += len(hosts)
                continue
            pool = hosts + self._neighbours(self.local)
            gains, predicted = self._gains(model, pool)
            for i, candidate in enumerate(hosts):  # one told before or still pending is not asked twice
                if key(candidate) in self.tried or key(candidate) in self.predictions:
                    gains[i] = -np.inf
            best = int(np.argmax(gains))
            promising = gains[best] > 0
            forced = not promising and rejected + len(hosts) >= self.tries
            if not promising and not forced:
                rejected += len(hosts)
                self.counts["screened"] += len(hosts)
                for candidate, values in zip(hosts, predicted):
                    reject(candidate, [float(v) for v in values])
                continue
            if forced:  # the host's likeliest (the first of the new ones, if any is new)
                best = int(np.argmax(gains[: len(hosts)]))
                self.counts["forced"] += 1
            rejected = 0
            for i, (candidate, values) in enumerate(zip(hosts, predicted)):
                if i != best:
                    self.counts["screened"] += 1
                    reject(candidate, [float(v) for v in values])
            candidate = pool[best]
            if best >= len(hosts):
                self.counts["local"] += 1
            self.counts["asked"] += 1
            self.predictions[key(candidate)] = {
                "params": candidate, "additive": model.additive(candidate).tolist(),
                "predicted": predicted[best].tolist(), "gain": float(gains[best]), "screened_in": bool(promising),
                "source": "host" if best < len(hosts) else "local"}
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
            "tried": sorted(self.tried),
            "predictions": self.predictions, "records": self.records, "counts": self.counts}))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.allocator.load_state_dict(state["allocator"])
        self.phase = state["phase"]
        self.measured = [(dict(p), list(v)) for p, v in state["measured"]]
        # a checkpoint from before the told set and the neighbour count: what it measured, and none counted
        self.tried = set(state.get("tried", [key(p) for p, _ in self.measured]))
        self.predictions = {k: dict(v) for k, v in state["predictions"].items()}
        self.records = [dict(r) for r in state["records"]]
        self.counts = {"local": 0, **state["counts"]}
        self._surrogate, self._fitted = None, -1


def _grid_index(grid: list[Any], value: Any) -> int:
    """Where `value` sits on a knob's grid: its index, or the nearest number's (0 for an unlisted name)."""
    if value in grid:
        return grid.index(value)
    numeric = [i for i, g in enumerate(grid) if isinstance(g, (int, float)) and not isinstance(g, bool)]
    if numeric and isinstance(value, (int, float)):
        return min(numeric, key=lambda i: abs(grid[i] - value))
    return 0


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
