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
