"""Exact per-layer allocation under a budget (a multiple-choice knapsack), as an ask/tell optimizer.

How NVIDIA ModelOpt AutoQuantize, HAWQ-V3 and NNCF's precision initialisation allocate bits, here over
autocomp's joint space (every knob of every layer, whatever its primitive):

1. sensitivity (shared with `greedy`): the reference (every knob least compressive), then each knob alone
   moved through up to `levels` values of its grid. Each measured (knob, value) gets a predicted loss in the
   first objective and a predicted change of the second, both relative to the reference; a failed value
   is not an option;
2. allocation: for `sweep` budgets on the second objective, from the reference's value to the most
   compressive prediction (every knob at its cheapest measured option), geometrically spaced where the
   two ends have one sign: choose exactly one value per knob minimising the summed predicted loss with
   the reference plus the summed predicted changes within the budget. Among equally good allocations the
   one predicted cheapest is taken;
3. each distinct allocation not measured already is asked, the middle budget's first and then halving the
   gaps (`spread_order`), so a run cut short still spans the sweep; then there is nothing more to ask (the
   runner stops early), as with `greedy`.

The integer program is solved exactly by `scipy.optimize.milp` (SciPy >= 1.9: HiGHS's branch-and-bound),
so an allocation never exceeds its budget in the predicted cost. Predictions add one knob's measured
effect to another's; the real evaluation says how far that holds. Knobs that are names
(`compresses == 0`) stay at the reference, and objectives after the second are not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from autocomp.optimizers.base import Params, SearchContext
from autocomp.optimizers.greedy import FISHER, SensitivitySearch
from autocomp.space import BoundSpace


def predicted_total(options: Sequence[Sequence[float]], choice: Sequence[int]) -> float:
    """The summed option values of one choice per group (exactly rounded, so the order never matters).

    Args:
        options: Per group, a number for each of its options.
        choice: The index of the chosen option of each group.

    Returns:
        The sum of the chosen options' numbers.
    """
    return math.fsum(float(group[i]) for group, i in zip(options, choice))


def _one_per_group(losses: np.ndarray, costs: np.ndarray, rows: np.ndarray, sizes: list[int],
                   capacity: float, max_loss: float | None) -> list[int] | None:
    """Solve one integer program: least loss (or, given `max_loss`, least cost) with one option per group."""
    lscale = float(np.abs(losses).max()) or 1.0
    cscale = float(np.abs(costs).max()) or 1.0
    starts = np.cumsum([0, *sizes[:-1]])
    objective = costs / cscale if max_loss is not None else losses / lscale
    constraints = [LinearConstraint(rows, 1, 1), LinearConstraint(costs[None, :] / cscale, -np.inf, capacity / cscale)]
    if max_loss is not None:
        slack = 1e-9 * max(1.0, abs(max_loss) / lscale)
        constraints.append(LinearConstraint(losses[None, :] / lscale, -np.inf, max_loss / lscale + slack))
    for _ in range(100):
        res = milp(objective, integrality=np.ones_like(losses), bounds=Bounds(0, 1), constraints=constraints,
                   options={"mip_rel_gap": 0.0})  # proven optimal, not HiGHS's default 0.01% gap
        if res.x is None:
            return None
        choice = [int(np.argmax(res.x[s:s + n])) for s, n in zip(starts, sizes)]
        if math.fsum(float(costs[s + i]) for s, i in zip(starts, choice)) <= capacity:
            return choice
        # over the capacity by less than the solver's feasibility tolerance: exclude that allocation
        cut = np.zeros((1, losses.size))
        cut[0, [s + i for s, i in zip(starts, choice)]] = 1.0
        constraints.append(LinearConstraint(cut, -np.inf, len(sizes) - 1))
    raise RuntimeError("knapsack: the integer program kept returning allocations over the capacity")


def solve_allocation(losses: Sequence[Sequence[float]], costs: Sequence[Sequence[float]],
                     capacity: float) -> list[int] | None:
    """Exactly one option per group with the least summed loss and a summed cost of at most `capacity`.

    A multiple-choice knapsack, solved exactly as a binary integer program by `scipy.optimize.milp`
    (HiGHS). Among allocations of (within 1e-9) the least loss, the one of least summed cost is returned.

    Args:
        losses: Per group (a knob), the predicted loss of each option (a value).
        costs: Per group, the predicted cost of each option; the same shape as `losses`.
        capacity: The largest summed cost allowed.

    Returns:
        The index of the chosen option of each group, whose summed cost (`predicted_total`) is at most
        `capacity`; None when no allocation fits.

    Raises:
        ValueError: When a group has no options or its losses and costs differ in number.
    """
    sizes = [len(group) for group in losses]
    if len(costs) != len(sizes) or any(len(c) != n for c, n in zip(costs, sizes)) or 0 in sizes:
        raise ValueError("every group needs at least one option, each with a loss and a cost")
    if not sizes:
        return [] if capacity >= 0 else None
    if math.fsum(min(map(float, group)) for group in costs) > capacity:
        return None  # even the cheapest allocation is over
    flat_loss = np.concatenate([np.asarray(group, dtype=float) for group in losses])
    flat_cost = np.concatenate([np.asarray(group, dtype=float) for group in costs])
    rows = np.zeros((len(sizes), flat_loss.size))
    for g, (start, n) in enumerate(zip(np.cumsum([0, *sizes[:-1]]), sizes)):
        rows[g, start:start + n] = 1.0
    best = _one_per_group(flat_loss, flat_cost, rows, sizes, capacity, None)
    if best is None:
        return None
    # among the least-loss allocations, the cheapest one (HiGHS returns any of them)
    least = predicted_total(losses, best)
    cheaper = _one_per_group(flat_loss, flat_cost, rows, sizes, capacity, least)
    if cheaper is not None and predicted_total(costs, cheaper) < predicted_total(costs, best) \
            and predicted_total(losses, cheaper) <= least + 1e-9 * max(1.0, abs(least)):
        return cheaper
    return best


def budget_sweep(start: float, end: float, count: int) -> list[float]:
    """`count` budgets from `start` to `end`: geometrically spaced when both have one sign, else evenly.

    Args:
        start: The first budget (the reference's value).
        end: The last budget (the most compressive prediction).
        count: How many budgets.

    Returns:
        The budgets, `start` first and `end` last.
    """
    if start == end:
        return [float(start)]
    if start * end > 0:
        points = np.geomspace(start, end, count)
    else:
        points = np.linspace(start, end, count)
    out = [float(b) for b in points]
    out[0], out[-1] = float(start), float(end)
    return out


def spread_order(count: int) -> list[int]:
    """0..count-1 ordered so that every prefix spreads over the range: the middle first, then halving the gaps.

    Breadth-first over intervals: [0, count) gives its middle, then its halves theirs, and so on.

    Args:
        count: How many indices.

    Returns:
        A permutation of range(count).
    """
    out, intervals = [], [(0, count - 1)]
    while intervals:
        lo, hi = intervals.pop(0)
        if lo > hi:
            continue
        mid = (lo + hi) // 2
        out.append(mid)
        intervals += [(lo, mid - 1), (mid + 1, hi)]
    return out


class KnapsackAllocation(SensitivitySearch):
    """Measure each knob alone, then allocate one value per knob exactly (an integer program) per budget.

    Settings: `levels` (grid values measured per knob, besides the reference), `sweep` (how many
    budgets on the second objective) and `sensitivity`: "measured" (the default), "fisher" (no
    sensitivity phase: each value's loss is the runner's Fisher proxy and its second objective's change
    is computed without data, so the reference and the allocations are the only evaluations), or a
    `sensitivity.json` (or a run directory holding one) to reuse instead of measuring. `plan` holds each
    asked allocation with its budget and predictions.
    """

    name = "knapsack"
    SETTINGS = {"levels": int, "sweep": int, "sensitivity": str}
    FISHER = True

    def __init__(self, space: BoundSpace, *, directions: Sequence[str], seed: int = 0,
                 context: SearchContext | None = None, levels: int = 10, sweep: int = 20,
                 sensitivity: str | None = None) -> None:
        if len(directions) < 2:
            raise ValueError("knapsack needs two objectives: the first to keep, the second to budget "
                             f"(got {len(directions)})")
        if levels < 2 or sweep < 2:
            raise ValueError("levels must be at least 2 and sweep at least 2")
        super().__init__(space, directions=directions, seed=seed, context=context, levels=levels,
                         sensitivity=sensitivity)
        self.sweep = sweep
        # per asked allocation: {"params", "budget", "capacity", "predicted": [objective 1, objective 2]}
        self.plan: list[dict[str, Any]] = []

    def _combinations(self) -> list[Params]:
        if self.source == FISHER:
            options = self._proxy_options()
            if options is None:
                raise ValueError("sensitivity: fisher: the gradient proxies predict no knob of this space (the "
                                 "weights of every searched layer change shape or there are none, as with heads "
                                 "or channel removal): use sensitivity: measured")
            knobs, choices, losses, costs, reference_value = options
            ref: list[float] | None = None
        else:
            ref, measured = self.one_knob_moves()
            if ref is None:
                return []  # the reference failed: nothing to measure changes against
            knobs, choices, losses, costs = self._measured_options(ref, measured)
            reference_value = float(ref[1])
        # budgets in the second objective's units; capacity = how much worse than the reference it may get
        worse = 1.0 if self.directions[1] == "minimize" else -1.0
        cheapest = math.fsum(min(group) for group in costs)
        seen = {_key(p) for p, _ in self.measured}
        # with proxies nothing is measured yet: the reference is asked beside the allocations
        out: list[Params] = [dict(self.reference)] if self.source == FISHER else []
        seen.update(_key(p) for p in out)
        for budget in budget_sweep(reference_value, reference_value + worse * cheapest, self.sweep):
            capacity = max(worse * (budget - reference_value), cheapest)  # rounding never below the cheapest
            choice = solve_allocation(losses, costs, capacity)
            if choice is None:
                continue
            candidate = {**self.reference, **{k: options[i] for k, options, i in zip(knobs, choices, choice)}}
            if _key(candidate) in seen:
                continue
            seen.add(_key(candidate))
            out.append(candidate)
            loss, cost = predicted_total(losses, choice), predicted_total(costs, choice)
            if ref is None:  # proxy units: the loss is the Fisher prediction, no first-objective value yet
                first: float | None = None
            else:
                first = float(ref[0]) - loss if self.directions[0] == "maximize" else float(ref[0]) + loss
            self.plan.append({"params": candidate, "budget": budget, "capacity": capacity, "proxy_loss": loss,
                              "predicted": [first, reference_value + worse * cost]})
        # asked spread over the sweep (the plan stays loosest first): a run cut short still spans the budgets
        head = len(out) - len(self.plan)
        return out[:head] + [self.plan[i]["params"] for i in spread_order(len(self.plan))]

    def _measured_options(self, ref: list[float], measured: list[tuple[str, Any, list[float]]]
                          ) -> tuple[list[str], list[list[Any]], list[list[float]], list[list[float]]]:
        """Per knob its values (the reference's first) with the measured loss and cost of each."""
        base = self._signed(ref)[:2]
        # per knob, in the space's order: its values, the reference's first, with the loss (objective 1
        # worse) and cost (objective 2 worse) each predicts; a value measured twice gets the mean
        found: dict[str, dict[Any, list[tuple[float, float]]]] = {}
        for name, value, values in measured:
            delta = self._signed(values)[:2] - base
            found.setdefault(name, {}).setdefault(value, []).append((-float(delta[0]), -float(delta[1])))
        knobs = [p.name for p in self.space.params if p.name in found]
        choices, losses, costs = [], [], []
        for name in knobs:
            values = [self.reference[name]] + [v for v in found[name] if v != self.reference[name]]
            pairs = [(0.0, 0.0)] + [tuple(np.mean(found[name][v], axis=0)) for v in values[1:]]
            choices.append(values)
            losses.append([float(p[0]) for p in pairs])
            costs.append([float(p[1]) for p in pairs])
        return knobs, choices, losses, costs

    def second_metric(self) -> str:
        """The name of the second objective, which the proxies must predict (`sensitivity: fisher`).

        Raises:
            ValueError: Without proxies, or when they do not predict the second objective.
        """
        if not self.context.proxies:
            raise ValueError("sensitivity: fisher needs the runner's gradient proxies (SearchContext.proxies); "
                             "run it through autocomp.search or use sensitivity: measured")
        name = self.context.objectives[1] if len(self.context.objectives) > 1 else "size_bytes"
        known = {k for row in self.context.proxies.values() for entry in row.values() for k in entry} - {"loss"}
        if name not in known:
            raise ValueError(f"sensitivity: fisher predicts {', '.join(sorted(known)) or 'no metric'} without "
                             f"evaluations, not the second objective '{name}': use sensitivity: measured")
        return name

    def proxy_options(self) -> dict[str, list[tuple[Any, float, float]]]:
        """Per compressing param, (value, proxy loss, change of the second objective) of each predicted value.

        The reference's value comes first (0, 0); a value the proxies leave out (no weight comparison) is
        not an option.
        """
        metric = self.second_metric()
        out: dict[str, list[tuple[Any, float, float]]] = {}
        for p in self.space.params:
            row = self.context.proxies.get(p.name)
            if not p.compresses or not row:
                continue
            options = [(self.reference[p.name], 0.0, 0.0)]
            for value in p.ordered():
                entry = row.get(repr(value), {})
                if value != self.reference[p.name] and "loss" in entry and metric in entry:
                    options.append((value, max(0.0, float(entry["loss"])), float(entry[metric])))
            if len(options) > 1:
                out[p.name] = options
        return out

    def _proxy_options(self) -> tuple[list[str], list[list[Any]], list[list[float]], list[list[float]], float] | None:
        """`_measured_options` from the proxies, and the reference's second objective (0 when unknown)."""
        options = self.proxy_options()
        if not options:
            return None
        worse = 1.0 if self.directions[1] == "minimize" else -1.0
        knobs = list(options)
        choices = [[v for v, _, _ in options[k]] for k in knobs]
        losses = [[loss for _, loss, _ in options[k]] for k in knobs]
        costs = [[worse * change for _, _, change in options[k]] for k in knobs]
        reference = self.context.proxy_info.get("reference", {}).get(self.second_metric(), 0.0)
        return knobs, choices, losses, costs, float(reference)

    def proxy_moves(self, measured: Sequence[tuple[Params, Sequence[float]]]
                    ) -> tuple[list[float] | None, list[tuple[str, Any, list[float]]]]:
        """One-knob moves predicted from the proxies, as `one_knob_moves` returns measured ones.

        The Fisher loss is mapped to the first objective by one factor, fitted (least squares through the
        origin) on the measured candidates: the measured drop against the reference over their summed proxy
        loss. The second objective's change is the proxies' own; later objectives do not change.

        Args:
            measured: Real (params, objective values), the reference's among them.

        Returns:
            The reference's values (None before it is measured) and (param, value, predicted values) per
            predicted one-knob move.
        """
        ref = next((list(map(float, v)) for p, v in measured if p == self.reference), None)
        if ref is None:
            return None, []
        options = self.proxy_options()
        sign = 1.0 if self.directions[0] == "maximize" else -1.0
        num = den = 0.0
        for params, values in measured:
            loss = math.fsum(next((o[1] for o in options.get(k, []) if o[0] == v), 0.0)
                             for k, v in params.items() if v != self.reference.get(k))
            num += loss * sign * (ref[0] - float(values[0]))
            den += loss * loss
        factor = max(num / den, 0.0) if den > 0 else 0.0
        moves = []
        for name, rows in options.items():
            for value, loss, change in rows[1:]:
                values = list(ref)
                values[0] = ref[0] - sign * factor * loss
                values[1] = ref[1] + change
                moves.append((name, value, values))
        return ref, moves

    def state_dict(self) -> dict[str, Any]:
        """The sensitivity state (queue, measurements, phase, outstanding asks) and the plan."""
        return {**super().state_dict(), "plan": self.plan}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        super().load_state_dict(state)
        self.plan = [dict(entry) for entry in state.get("plan", [])]


def _key(params: Params) -> tuple[tuple[str, Any], ...]:
    """A hashable identity of a candidate: equal exactly when the dicts are equal."""
    return tuple(sorted(params.items()))
