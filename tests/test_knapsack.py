"""The knapsack optimizer: exact allocations (checked by brute force), budgets kept, a search that ends."""

import itertools
import json
import math

import numpy as np
import pytest

import autocomp
from autocomp.errors import AutocompError
from autocomp.optimizers import Told, make_optimizer
from autocomp.optimizers.knapsack import budget_sweep, predicted_total, solve_allocation, spread_order
from autocomp.testing.conformance import check_beats_random, check_optimizer, reference_space
from autocomp.testing.fake import fake_metrics
from autocomp.testing.tiny import fast_latency, tiny_space

MO = ("maximize", "minimize")


def make(seed=0, space=None, directions=MO, **settings):
    return make_optimizer("knapsack", space or reference_space(), directions=directions, seed=seed, **settings)


def brute_force(losses, costs, capacity):
    """The least summed loss over every allocation within `capacity` (None when none fits), and the least
    cost among the allocations of that loss."""
    feasible = [c for c in itertools.product(*(range(len(g)) for g in losses))
                if predicted_total(costs, c) <= capacity]
    if not feasible:
        return None, None
    least = min(predicted_total(losses, c) for c in feasible)
    ties = [c for c in feasible if predicted_total(losses, c) <= least + 1e-9 * max(1.0, abs(least))]
    return least, min(predicted_total(costs, c) for c in ties)


def test_allocation_is_optimal_by_brute_force():
    rng = np.random.default_rng(0)
    for instance in range(40):
        groups = int(rng.integers(1, 5))
        sizes = rng.integers(1, 5, groups)
        if instance % 2:  # integer costs: capacities land exactly on allocations' costs, and losses tie
            losses = [rng.integers(-1, 6, n).astype(float).tolist() for n in sizes]
            costs = [rng.integers(-8, 3, n).astype(float).tolist() for n in sizes]
        else:
            losses = [rng.normal(1.0, 1.0, n).tolist() for n in sizes]
            costs = [rng.normal(-1.0, 2.0, n).tolist() for n in sizes]
        low = sum(min(g) for g in costs)
        high = sum(max(g) for g in costs)
        for capacity in [low - 1.0, low, high, *rng.uniform(low, high, 4).tolist(),
                         *(predicted_total(costs, c) for c in [[int(rng.integers(n)) for n in sizes]])]:
            least, cheapest = brute_force(losses, costs, capacity)
            choice = solve_allocation(losses, costs, capacity)
            if least is None:
                assert choice is None, (losses, costs, capacity)
                continue
            assert choice is not None, (losses, costs, capacity)
            assert predicted_total(costs, choice) <= capacity  # never over, not even by rounding
            assert predicted_total(losses, choice) == pytest.approx(least, rel=1e-9, abs=1e-9)
            assert predicted_total(costs, choice) == pytest.approx(cheapest, rel=1e-9, abs=1e-9)


def test_allocation_edge_cases():
    assert solve_allocation([], [], 0.0) == []
    assert solve_allocation([[0.0, 1.0]], [[0.0, -1.0]], -2.0) is None
    assert solve_allocation([[0.0, 1.0, 1.0]], [[0.0, -1.0, -2.0]], -1.0) == [2]  # equal loss: the cheaper
    with pytest.raises(ValueError, match="at least one option"):
        solve_allocation([[]], [[]], 0.0)


def test_budget_sweep_is_geometric_within_one_sign():
    sweep = budget_sweep(1000.0, 10.0, 3)
    assert sweep == pytest.approx([1000.0, 100.0, 10.0]) and (sweep[0], sweep[-1]) == (1000.0, 10.0)
    assert budget_sweep(100.0, -100.0, 3) == pytest.approx([100.0, 0.0, -100.0])
    assert budget_sweep(5.0, 5.0, 4) == [5.0]


def run_to_the_end(opt, space, batch=4, values=None):
    """Ask/tell on the fake evaluator until the optimizer has nothing left; every asked candidate."""
    values = values or (lambda m: (m["accuracy"], m["size_bytes"]))
    asked = []
    while candidates := opt.ask(batch):
        asked += candidates
        opt.tell([Told(c, values(fake_metrics(space, c))) for c in candidates])
    return asked


def additive_prediction(space, candidate, reference, index):
    """Objective `index` of fake_metrics predicted from one-knob changes, computed here independently."""
    name = ("accuracy", "size_bytes")[index]
    base = fake_metrics(space, reference)[name]
    return base + sum(fake_metrics(space, {**reference, k: v})[name] - base
                      for k, v in candidate.items() if v != reference[k])


def test_every_allocation_keeps_its_budget_in_prediction():
    space = reference_space()
    opt = make(levels=3, sweep=12)
    asked = run_to_the_end(opt, space)
    assert len(opt.plan) >= 6
    budgets = [e["budget"] for e in opt.plan]
    assert budgets == sorted(budgets, reverse=True)  # loosest budget first
    for entry in opt.plan:
        predicted_size = additive_prediction(space, entry["params"], opt.reference, 1)
        assert entry["predicted"][1] == pytest.approx(predicted_size, rel=1e-9)
        assert entry["predicted"][0] == pytest.approx(additive_prediction(space, entry["params"], opt.reference, 0))
        assert entry["predicted"][1] <= entry["budget"] + 1e-9 * abs(entry["budget"])
    # tighter budgets trade predicted accuracy for predicted size
    predicted = [e["predicted"] for e in opt.plan]
    assert all(b[0] <= a[0] + 1e-12 and b[1] <= a[1] for a, b in zip(predicted, predicted[1:]))
    # the last budget is the most compressive prediction: every knob at its cheapest measured value
    assert opt.plan[-1]["params"]["fc1.prune.ratio"] == 0.95 and opt.plan[-1]["params"]["fc3.quantize.bits"] == 2
    # asked spread over the sweep: the middle budget's first, then the gaps halved
    assert asked[-len(opt.plan):] == [opt.plan[i]["params"] for i in spread_order(len(opt.plan))]


@pytest.mark.parametrize("count", [0, 1, 2, 5, 12, 33])
def test_spread_order_is_a_permutation_whose_prefixes_spread(count):
    order = spread_order(count)
    assert sorted(order) == list(range(count))
    for k in range(1, count + 1):  # no gap in a prefix is more than twice as wide as an even spread's
        edges = [-1, *sorted(order[:k]), count]
        assert max(b - a for a, b in zip(edges, edges[1:])) <= 2 * math.ceil((count + 1) / (k + 1))


def test_a_maximized_second_objective_is_a_lower_bound():
    space = reference_space()
    opt = make(levels=3, sweep=8, directions=("maximize", "maximize"))
    run_to_the_end(opt, space, values=lambda m: (m["accuracy"], 1e6 / m["size_bytes"]))  # a compression ratio
    assert len(opt.plan) >= 4
    assert all(e["predicted"][1] >= e["budget"] - 1e-9 * abs(e["budget"]) for e in opt.plan)
    assert opt.plan[-1]["predicted"][1] > 2 * opt.plan[0]["predicted"][1]


def test_asks_each_allocation_once_then_nothing():
    space = reference_space()
    opt = make(levels=3, sweep=30)
    asked = run_to_the_end(opt, space)
    moves = 3 * (3 + 3 + 2)  # per layer: prune, bits, rank values besides the reference
    assert len(asked) == 1 + moves + len(opt.plan)
    assert len({tuple(sorted(c.items())) for c in asked}) == len(asked)  # no duplicates, nothing re-measured
    assert all(space.contains(c) for c in asked)
    assert opt.ask(5) == [] and opt.ask(1) == []


def test_failed_values_are_never_allocated_and_a_failed_reference_ends_the_search():
    space = reference_space()
    opt = make(levels=3, sweep=10)
    while candidates := opt.ask(4):
        opt.tell([Told(c, None if c["fc2.quantize.bits"] == 2 else tuple(fake_metrics(space, c).values()))
                  for c in candidates])
    assert opt.plan and all(e["params"]["fc2.quantize.bits"] != 2 for e in opt.plan)
    opt = make(levels=3)
    while candidates := opt.ask(4):
        opt.tell([Told(c, None) for c in candidates])
    assert opt.plan == [] and opt.ask(4) == []


def test_state_round_trip_in_the_allocation_phase():
    space = reference_space()
    opt = make(levels=3, sweep=12)
    while opt.phase == "sensitivity":
        candidates = opt.ask(5)
        opt.tell([Told(c, tuple(fake_metrics(space, c).values())) for c in candidates])
    clone = make(levels=3, sweep=12)
    clone.load_state_dict(json.loads(json.dumps(opt.state_dict())))
    assert run_to_the_end(clone, space) == run_to_the_end(opt, space)
    assert clone.plan == opt.plan


def test_conformance_and_settings():
    check_optimizer(lambda space, seed: make(seed, space))
    with pytest.raises(AutocompError, match="knapsack needs two objectives"):
        make(directions=("maximize",))
    with pytest.raises(AutocompError, match="sweep at least 2"):
        make(sweep=1)
    with pytest.raises(AutocompError, match="no setting 'target'"):
        make(target=0.1)


def test_beats_random_on_the_fake_evaluator():
    check_beats_random(lambda space, seed: make(seed, space), seeds=(0, 1, 2))


def test_a_search_ends_after_the_sweep_with_budgets_met_on_its_front(tmp_path, tiny):
    model, data = tiny
    space = tiny_space().bind(model)
    opt = make_optimizer("knapsack", space, directions=MO, seed=0, levels=2, sweep=6)
    result = autocomp.search(model, data, space=tiny_space(), optimizer=opt, trials=60, seed=0, runs_dir=tmp_path,
                             name="k", progress=False, latency=fast_latency())
    sensitivity = 1 + 3 * (2 + 2)  # the reference, then per layer two pruning ratios and two bit widths
    assert len(result.trials) == sensitivity + len(opt.plan) < 60  # stopped after the sweep
    assert [t.params for t in result.trials[sensitivity:]] == [opt.plan[i]["params"]
                                                              for i in spread_order(len(opt.plan))]
    budgets = {json.dumps(e["params"], sort_keys=True): e["budget"] for e in opt.plan}
    allocated = [t for t in result.pareto if json.dumps(t.params, sort_keys=True) in budgets]
    assert any(t.metrics["size_bytes"] <= budgets[json.dumps(t.params, sort_keys=True)] for t in allocated)
