import subprocess
import sys

import pytest

from autocomp.optimizers import OPTIMIZERS, make_optimizer
from autocomp.testing.conformance import check_optimizer, reference_space, run_steps


def factory(name):
    return lambda space, seed: make_optimizer(name, space, directions=("maximize", "minimize"), seed=seed)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_conformance(name):
    check_optimizer(factory(name))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_same_seed_same_asks_in_a_child_process(name):
    here = run_steps(factory(name)(reference_space(), 3), 4)
    code = (
        "import json\n"
        "from autocomp.optimizers import make_optimizer\n"
        "from autocomp.testing.conformance import reference_space, run_steps\n"
        f"opt = make_optimizer({name!r}, reference_space(), directions=('maximize', 'minimize'), seed=3)\n"
        "print(json.dumps(run_steps(opt, 4)))\n"
    )
    import json

    child = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    assert child == here


def test_uniform_ties_every_layer_to_one_setting():
    space = reference_space()
    opt = factory("uniform")(space, 0)
    for candidate in opt.ask(20):
        for knob in ("prune.ratio", "quantize.bits", "lowrank.rank_ratio"):
            assert len({v for k, v in candidate.items() if k.endswith(knob)}) == 1


def test_uniform_stops_when_the_grid_is_exhausted():
    space = reference_space()
    opt = factory("uniform")(space, 0)
    total = len(opt.grid)
    asked = [c for _ in range(total) for c in opt.ask(10)]
    assert len(asked) == total
    assert len({tuple(sorted(c.items())) for c in asked}) == total
    assert opt.ask(5) == []


def test_unknown_optimizer_is_a_clear_error():
    from autocomp.errors import AutocompError

    with pytest.raises(AutocompError, match="unknown optimizer 'annealing'.*random"):
        make_optimizer("annealing", reference_space(), directions=("maximize",), seed=0)


def _two_ratio_space():
    from autocomp.space import BoundSpace
    from autocomp.space.params import FloatRange, Param

    return BoundSpace(params=tuple(Param(name=f"{layer}.prune.ratio", domain=FloatRange(low=0.0, high=0.95, step=0.05),
                                         primitive="prune", knob="prune.ratio", layers=(layer,), compresses=1)
                                   for layer in ("fc1", "fc2")), layers=("fc1", "fc2"))


def _infeasible_asks(told_violation: bool, seed: int) -> int:
    """TPE maximizing r = sum of two ratios where r > 0.6 breaks a budget and is never scored (as a search
    skips it before fine-tuning): how many of the last 20 of 40 asks were over the budget."""
    from autocomp.optimizers import Told

    opt = make_optimizer("tpe", _two_ratio_space(), directions=("maximize",), seed=seed, n_startup_trials=8)
    over = []
    for _ in range(20):
        told = []
        for c in opt.ask(2):
            r = c["fc1.prune.ratio"] + c["fc2.prune.ratio"]
            over.append(r > 0.6 + 1e-9)
            told.append(Told(c, None, (r - 0.6) if told_violation else 0.0) if over[-1] else Told(c, (r,), 0.0))
        opt.tell(told)
    return sum(over[20:])


def test_tpe_learns_a_budget_from_trials_skipped_before_scoring():
    # told with their violation, skipped candidates teach TPE where the budget is; told as plain failures
    # (what Optuna ignores) TPE keeps asking past it, chasing the objective
    with_violation = [_infeasible_asks(True, seed) for seed in range(3)]
    as_failures = [_infeasible_asks(False, seed) for seed in range(3)]
    assert sum(with_violation) < 0.7 * sum(as_failures), (with_violation, as_failures)


def test_tpe_keeps_the_violation_of_a_skipped_trial_through_the_state():
    import json

    from optuna.trial import TrialState

    from autocomp.optimizers import Told

    opt = make_optimizer("tpe", _two_ratio_space(), directions=("maximize",), seed=0)
    a, b = opt.ask(2)
    opt.tell([Told(a, None, 0.5), Told(b, None, 0.0)])
    clone = make_optimizer("tpe", _two_ratio_space(), directions=("maximize",), seed=0)
    clone.load_state_dict(json.loads(json.dumps(opt.state_dict())))
    for study in (opt.study, clone.study):
        skipped, failed = study.get_trials()
        assert (skipped.state, skipped.constraints) == (TrialState.PRUNED, {"violation": 0.5})
        assert failed.state == TrialState.FAIL
