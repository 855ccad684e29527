"""Guided joint search: the allocator's start, the additive surrogate and its screen, state and resume."""

import json
import random
import subprocess

import numpy as np
import pytest

from autocomp.errors import AutocompError
from autocomp.optimizers import SearchContext, Told, make_optimizer
from autocomp.optimizers.guided import AdditiveSurrogate, key
from autocomp.testing.conformance import check_optimizer, reference_space, run_steps
from autocomp.testing.fake import fake_metrics
from autocomp.testing.processes import MNIST_SPACE, cli, journal, kill_when, whole_mnist_run

MO = ("maximize", "minimize")
GUIDED = ("tpe", "nsga2", "ga")


def make(name, seed=0, space=None, workdir=None, **settings):
    settings = {"guided": True, "levels": 2, "sweep": 4, **settings}
    return make_optimizer(name, space or reference_space(), directions=MO, seed=seed,
                          context=SearchContext(workdir=workdir), **settings)


def fake(space, c):
    return tuple(fake_metrics(space, c).values())


def drive(opt, evaluations, batch=2):
    """Ask/tell fake evaluations until `evaluations` were asked; returns (asked, told results)."""
    space, asked, told = opt.space, [], []
    while len(asked) < evaluations:
        candidates = opt.ask(min(batch, evaluations - len(asked)))
        if not candidates:
            break
        asked += candidates
        results = [Told(c, fake(space, c)) for c in candidates]
        told += results
        opt.tell(results)
    return asked, told


@pytest.mark.parametrize("name", (*GUIDED, "rl"))
def test_conformance_and_a_round_trip_while_screening(name):
    check_optimizer(lambda space, seed: make(name, seed, space))
    opt = make(name)
    drive(opt, 40)
    assert opt.guide.phase == "search" and opt.guide.counts["proposed"] > 0
    state = json.loads(json.dumps(opt.state_dict()))
    expected = run_steps(opt, 10, fail_every=4)
    clone = make(name)
    clone.load_state_dict(state)
    assert run_steps(clone, 10, fail_every=4) == expected
    assert clone.guide.counts == opt.guide.counts and clone.guide.records == opt.guide.records


@pytest.mark.parametrize("name", GUIDED)
def test_the_search_starts_from_the_allocators_measurements_and_solutions(name):
    space = reference_space()
    knapsack = make_optimizer("knapsack", space, directions=MO, seed=0, levels=2, sweep=4)
    start, _ = drive(knapsack, 200)
    opt = make(name)
    asked, _ = drive(opt, len(start))
    assert asked == start and opt.guide.allocations() == [e["params"] for e in knapsack.plan]
    first = []
    if name in ("nsga2", "ga"):  # keep the parents of the first breeding (screened children may breed more)
        breed = opt._breed

        def spy():
            breed()
            if not first:
                first.append(list(opt.parents))

        opt._breed = spy
    drive(opt, 2)  # the first screened asks
    if name in ("nsga2", "ga"):  # the first generation was selected from the start's pool, none of it random
        assert first and first[0] and all(opt._params(p) in start for p in first[0])
    else:  # every start point is a trial of the study, scored as measured
        trials = {json.dumps(t.params, sort_keys=True): t.values for t in opt.study.get_trials()}
        assert all(trials[json.dumps(c, sort_keys=True)] == list(fake(space, c)) for c in start)


def test_guided_rl_replays_the_allocators_points_as_its_first_episodes():
    from autocomp.optimizers.rl.env import knob_value

    space = reference_space()
    knapsack = make_optimizer("knapsack", space, directions=MO, seed=0, levels=2, sweep=4)
    start, _ = drive(knapsack, 200)
    opt = make("rl", warmup=50)
    asked, _ = drive(opt, len(start))
    assert asked == start and opt.episodes == len(start)
    # each replayed episode's stored actions select exactly the evaluated values, layer by layer
    state = opt.state_dict()
    assert state["guide"]["phase"] == "start" or opt.guide.phase == "search"
    assert opt.model.replay_buffer.size() == len(start) * len(opt.env.units)
    actions = opt.model.replay_buffer.actions[: opt.model.replay_buffer.size(), 0]
    for e, params in enumerate(start):
        for u, (_, knobs) in enumerate(opt.env.units):
            action = opt.model.policy.unscale_action(actions[e * len(opt.env.units) + u])
            assert all(knob_value(p, action[opt.env.knobs.index(p.knob)]) == params[p.name] for p in knobs)
    after, _ = drive(opt, 4)  # then the actor's own episodes (no random warmup), screened
    assert opt.guide.phase == "search" and opt.guide.counts["proposed"] >= len(after) == 4


@pytest.mark.parametrize("name", ("nsga2", "rl"))
def test_evolution_and_rl_learn_from_the_front_neighbours_the_guide_asks(name):
    opt = make(name, local=32)
    drive(opt, 40)
    assert opt.guide.phase == "search"

    def learned():  # what the host holds to learn from: the pool to select from, or stored transitions
        return len(opt.evaluated) if name == "nsga2" else opt.model.replay_buffer.size()

    grown = {}
    for _ in range(30):  # until both a host child and a front neighbour were asked and told
        counted = opt.guide.counts["local"]
        [candidate] = opt.ask(1)
        source = "local" if opt.guide.counts["local"] > counted else "host"
        before = learned()  # after the ask: screened-out children were told to the host already
        opt.tell([Told(candidate, fake(opt.space, candidate))])
        grown.setdefault(source, learned() - before)
        if name == "nsga2" and source == "local":
            assert opt._params(opt.evaluated[-1]) == candidate
            assert opt.evaluated[-1].fitness.values == fake(opt.space, candidate)
        if len(grown) == 2:
            break
    # a neighbour counts like the host's own: one individual more, or one episode's transitions
    step = 1 if name == "nsga2" else len(opt.env.units)
    assert grown["local"] == step and grown.get("host", step) == step
    if name == "nsga2":  # a child screened out (predicted fitness), then measured: rescored, not copied
        held = opt.evaluated[0]
        params = opt._params(held)
        measured = (0.123, 4567.0)
        opt._adopt([Told(params, measured)])
        assert held.fitness.values == measured
        assert sum(opt._params(ind) == params for ind in opt.evaluated + opt.parents) == 1


def test_surrogate_is_exact_on_an_additive_objective_and_learns_an_interaction():
    space = reference_space()
    reference = {p.name: p.least_compressive() for p in space.params}
    rng = np.random.default_rng(0)
    weights = {p.name: rng.uniform(0.1, 1.0) for p in space.params}

    def additive(c, bend=0.0):
        terms = [weights[k] * abs(p.domain.to_unit(c[k]) - p.domain.to_unit(reference[k]))
                 for k, p in ((q.name, q) for q in space.params)]
        return (1.0 - sum(terms) - bend * sum(terms) ** 2, 10.0 + sum(terms))

    moves = [(p.name, v, additive({**reference, p.name: v})) for p in space.params for v in p.ordered()[1:]]
    model = AdditiveSurrogate(space, reference, additive(reference), moves)
    for c in (space.sample(np.random.default_rng(s)) for s in range(20)):
        assert model.additive(c) == pytest.approx(additive(c), abs=1e-9)  # every grid value measured
    # a compounding loss: the additive part misses it, the refitted correction learns it
    samples = [space.sample(np.random.default_rng(s)) for s in range(200)]
    data = [(c, additive(c, bend=0.2)) for c in samples[:150]]
    model = AdditiveSurrogate(space, reference, additive(reference), moves)
    model.fit(data)
    held = samples[150:]
    before = np.median([abs(model.additive(c)[0] - additive(c, 0.2)[0]) for c in held])
    after = np.median([abs(model.predict(c)[0] - additive(c, 0.2)[0]) for c in held])
    assert after < 0.2 * before


def test_a_screened_candidate_adds_no_predicted_hypervolume_and_each_evaluation_is_recorded(tmp_path):
    opt = make("tpe", workdir=str(tmp_path), tries=50, pool=1, local=0)  # no neighbours: a plain screen
    rejected = []
    original = opt._reject

    def spy(params, predicted):
        guide = opt.guide
        model = guide.surrogate()
        known = [model.to_model(v) for _, v in guide.measured]
        known += [model.to_model(r["predicted"]) for r in guide.predictions.values()]  # pending asks count
        mean, std = model.predict_model(params)
        assert np.allclose(model.from_model(mean), predicted)  # what the host is told is the prediction
        repeat = key(params) in guide.tried or key(params) in guide.predictions
        rejected.append((mean, np.zeros(2) if std is None else std, known, repeat))
        original(params, predicted)

    opt._reject = spy
    _, told = drive(opt, 80)
    guide = opt.guide
    assert guide.counts["screened"] == len(rejected) > 0
    assert guide.counts["proposed"] == guide.counts["screened"] + guide.counts["asked"]
    for predicted, std, known, repeat in rejected:  # a repeat, or adds nothing even when moved by a deviation:
        optimistic = (predicted[0] + std[0], predicted[1] - std[1])  # weakly dominated, or beyond the worst known
        assert (repeat or any(q[0] >= optimistic[0] and q[1] <= optimistic[1] for q in known)
                or optimistic[0] < min(q[0] for q in known) or optimistic[1] > max(q[1] for q in known))
    predicted_trials = [t for t in opt.study.get_trials() if t.user_attrs.get("predicted")]
    assert len(predicted_trials) == len(rejected)
    doc = json.loads((tmp_path / "surrogate.json").read_text())
    after_start = told[len(told) - guide.counts["asked"]:]
    assert [r["params"] for r in doc["records"]] == [t.params for t in after_start]
    assert all(r["measured"] == list(t.values) for r, t in zip(doc["records"], after_start))
    assert all(r["gain"] > 0 for r in doc["records"] if r["screened_in"])
    errors = [abs(r["predicted"][0] - r["measured"][0]) for r in doc["records"]]
    assert doc["summary"]["error"]["median"][0] == pytest.approx(float(np.median(errors)))
    assert doc["summary"]["screened_share"] == pytest.approx(len(rejected) / guide.counts["proposed"])


def test_pools_pick_the_largest_predicted_gain_and_neighbours_stay_next_to_the_front():
    opt = make("tpe", pool=3, local=6)
    pools = []
    original = opt.guide._gains

    def spy(model, candidates):
        gains, predicted = original(model, candidates)
        pools.append((list(candidates), gains))
        return gains, predicted

    opt.guide._gains = spy
    guide, checked = opt.guide, 0
    while guide.counts["asked"] + len(guide.allocator.measured) < 60:
        pools.clear()
        tried = set(guide.tried)
        [candidate] = opt.ask(1)
        if pools:  # a screened ask: it comes from the last pool, the best new one there when any was promising
            candidates, gains = pools[-1]
            new = [g for c, g in zip(candidates, gains) if json.dumps(c, sort_keys=True) not in tried]
            assert candidate in candidates
            if max(new) > 0:
                assert gains[candidates.index(candidate)] == max(new)
                checked += 1
        opt.tell([Told(candidate, fake(opt.space, candidate))])
    assert checked > 10 and guide.counts["local"] > 0 and guide.counts["asked"] == len(guide.records)
    assert sum(r["source"] == "local" for r in guide.records) == guide.counts["local"]
    measured = [p for p, _ in guide.measured]
    for record in guide.records:
        if record["source"] == "local":  # new, and one or two knobs away from a point measured before it
            before = measured[: measured.index(record["params"])]
            assert record["params"] not in before
            assert min(sum(record["params"][k] != m[k] for k in m) for m in before) in (1, 2)
    with pytest.raises(AutocompError, match="pool must be at least 1"):
        make("tpe", pool=0)
    with pytest.raises(AutocompError, match="local must be 0 or more"):
        make("tpe", local=-1)


def test_a_reference_bounds_the_gain_to_the_region_the_user_cares_about():
    opt = make("tpe")
    drive(opt, 40)
    guide = opt.guide
    model = guide.surrogate()
    pool = guide._neighbours(40)
    free, _ = guide._gains(model, pool)
    floor = float(np.median([v[0] for _, v in guide.measured]))  # half the measured accuracies are below it
    guide.reference = [floor, None]
    bounded, _ = guide._gains(model, pool)
    for candidate, gain in zip(pool, bounded):
        mean, std = model.predict_model(candidate)
        if mean[0] + std[0] <= floor:  # even optimistically below the floor: nothing to add
            assert gain == 0.0
        else:  # above it: measured from the floor, not from the worst measured accuracy
            assert gain >= -1e-12
    assert any(g == 0.0 < f for g, f in zip(bounded, free))  # ones the unbounded gain would have valued
    assert any(g > 0.0 for g in bounded)
    with pytest.raises(AutocompError, match="reference must give a number or null for each of the 2"):
        make("tpe", reference=[0.9])
    with pytest.raises(AutocompError, match="reference must give"):
        make("tpe", reference=[0.9, "big"])
    with pytest.raises(AutocompError, match="minimized objective must be positive"):
        make("tpe", reference=[0.9, 0])


def test_neighbours_move_along_any_grid_and_never_repeat_a_told_candidate():
    from autocomp.optimizers.guided import Guide
    from autocomp.space import BoundSpace, Choice, FloatRange, IntRange, Param

    space = BoundSpace(params=(
        Param(name="a.prune.ratio", domain=FloatRange(low=0.0, high=1.0), primitive="prune", knob="prune.ratio",
              layers=("a",), compresses=1),  # no step: a continuous range
        Param(name="a.lowrank.rank", domain=IntRange(low=1, high=256), primitive="lowrank", knob="lowrank.rank",
              layers=("a",), compresses=-1),  # more values than the fine grid holds
        Param(name="a.quantize.mode", domain=Choice(values=("x", "y", "z")), primitive="quantize",
              knob="quantize.mode", layers=("a",)),
    ), layers=("a",))
    guide = Guide(space, directions=MO, seed=0, context=SearchContext())
    front = [({"a.prune.ratio": 0.37, "a.lowrank.rank": 101, "a.quantize.mode": "y"}, [0.9, 10.0]),
             ({"a.prune.ratio": 0.8, "a.lowrank.rank": 7, "a.quantize.mode": "z"}, [0.8, 5.0])]
    guide.tell([Told(p, tuple(v)) for p, v in front])
    infeasible = {"a.prune.ratio": 0.37, "a.lowrank.rank": 101, "a.quantize.mode": "x"}
    guide.tell([Told(infeasible, (0.95, 9.0), violation=1.0)])
    found = guide._neighbours(40)
    assert len(found) > 10
    for candidate in found:
        assert space.contains(candidate)
        assert min(sum(candidate[k] != p[k] for k in p) for p, _ in front) in (1, 2)
        assert key(candidate) not in guide.tried  # neither a measured one nor the infeasible one
    assert key(infeasible) in guide.tried and infeasible not in [p for p, _ in guide.measured]


def test_a_cost_measured_at_zero_is_modelled_linearly_and_a_state_with_pending_asks_resumes():
    opt = make("tpe")
    drive(opt, 40)
    guide = opt.guide
    assert guide.surrogate().log.tolist() == [False, True]  # size, a positive cost: log space
    pending = opt.ask(2)
    state = json.loads(json.dumps(opt.state_dict()))
    clone = make("tpe")
    clone.load_state_dict(state)
    results = [Told(c, fake(opt.space, c)) for c in pending]
    for o in (opt, clone):
        o.tell(results)
    assert run_steps(clone, 6) == run_steps(opt, 6)
    zero = dict(pending[0])
    zero["fc1.prune.ratio"] = 0.95 if zero["fc1.prune.ratio"] != 0.95 else 0.9
    opt.tell([Told(zero, (0.5, 0.0))])  # a cost of 0 has no logarithm
    assert opt.guide.surrogate().log.tolist() == [False, False]
    assert np.isfinite(opt.guide.surrogate().predict(zero)).all()


def test_costs_are_modelled_in_log_space_where_knob_factors_multiply():
    space = reference_space()
    reference = {p.name: p.least_compressive() for p in space.params}
    rng = np.random.default_rng(1)
    weights = {p.name: rng.uniform(0.1, 0.5) for p in space.params}

    def size(c):  # one layer's bytes: each knob scales them by its own factor, so the factors multiply
        return 1e6 * np.prod([10.0 ** -(weights[p.name] * abs(p.domain.to_unit(c[p.name])
                                                               - p.domain.to_unit(reference[p.name])))
                              for p in space.params])

    def values(c):
        return (0.9, size(c))

    moves = [(p.name, v, values({**reference, p.name: v})) for p in space.params for v in p.ordered()[1:]]
    linear = AdditiveSurrogate(space, reference, values(reference), moves)
    logged = AdditiveSurrogate(space, reference, values(reference), moves, log=(False, True))
    samples = [space.sample(np.random.default_rng(s)) for s in range(20)]
    for c in samples:  # exact in log space, from one-knob moves alone
        assert logged.additive(c)[1] == pytest.approx(size(c), rel=1e-9)
    assert max(abs(linear.additive(c)[1] / size(c) - 1) for c in samples) > 0.2


def test_without_screening_nothing_is_screened_and_settings_are_checked():
    opt = make("nsga2", screen=False)
    drive(opt, 60)
    assert opt.guide.counts["screened"] == 0 and opt.guide.counts["asked"] > 0
    with pytest.raises(AutocompError, match="only apply with guided: true"):
        make_optimizer("tpe", reference_space(), directions=MO, seed=0, levels=3)
    with pytest.raises(AutocompError, match="guided needs two objectives"):
        make_optimizer("tpe", reference_space(), directions=("maximize",), seed=0, guided=True)
    with pytest.raises(AutocompError, match="setting 'guided' must be bool"):
        make_optimizer("nsga2", reference_space(), directions=MO, seed=0, guided="yes")


GUIDED_SPACE = MNIST_SPACE.replace("groups:", "optimizer:\n  name: tpe\n  tpe: {guided: true, levels: 2, sweep: 3}\n"
                                   "groups:")
TRIALS = 22  # 13 sensitivity points, up to 3 allocations, then screened TPE asks


def test_a_guided_run_resumes_after_sigkill_to_the_same_trials(tmp_path):
    common, whole = whole_mnist_run(tmp_path, GUIDED_SPACE, TRIALS)
    surrogate = json.loads((tmp_path / "whole" / "surrogate.json").read_text())
    assert surrogate["records"] and (tmp_path / "whole" / "sensitivity.json").is_file()
    run_dir = tmp_path / "cut"
    rng = random.Random(1)
    proc = subprocess.Popen(cli("search", str(tmp_path / "space.yaml"), "--name", "cut", *common),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kills = 0
    while kills < 3:  # kills spread over the start and the screened search
        if not kill_when(proc, run_dir, len(journal(run_dir)) + rng.randint(3, 7), rng):
            break
        kills += 1
        proc = subprocess.Popen(cli("resume", str(run_dir), "--quiet"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert kills >= 2
    resumed = journal(run_dir)
    # a repeated ask is journaled as a copy and not counted against the budget: TRIALS evaluated, maybe more rows
    assert [r["id"] for r in resumed] == list(range(len(whole)))
    assert sum(not r["worker"].startswith("journal") for r in resumed) == TRIALS
    assert [r["params"] for r in resumed] == [r["params"] for r in whole]
    again = json.loads((run_dir / "surrogate.json").read_text())
    assert again["records"] == surrogate["records"] and again["summary"] == surrogate["summary"]


def test_a_checkpoint_from_before_the_told_set_still_resumes():
    opt = make("tpe")
    drive(opt, 40)
    state = json.loads(json.dumps(opt.state_dict()))
    del state["guide"]["tried"], state["guide"]["counts"]["local"]  # as the previous release saved it
    clone = make("tpe")
    clone.load_state_dict(state)
    assert clone.guide.tried == {key(p) for p, _ in opt.guide.measured} and clone.guide.counts["local"] == 0
    assert len(run_steps(clone, 4)) == 8
