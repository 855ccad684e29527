import numpy as np
import pytest

from autocomp.space.params import Choice, FloatRange, IntRange

DOMAINS = [
    Choice(values=(0.25, 0.5, 1.0)),
    IntRange(low=2, high=8),
    IntRange(low=4, high=64, step=4),
    IntRange(low=1, high=1024, log=True),
    FloatRange(low=0.0, high=0.95, step=0.05),
    FloatRange(low=0.1, high=0.9),
    FloatRange(low=1e-3, high=1.0, log=True),
]


@pytest.mark.parametrize("domain", DOMAINS, ids=repr)
def test_samples_grid_and_nearest_stay_inside(domain):
    rng = np.random.default_rng(0)
    samples = [domain.sample(rng) for _ in range(200)]
    assert all(domain.contains(s) for s in samples)
    assert all(domain.contains(v) for v in domain.grid(7))
    for u in np.linspace(0, 1, 11):
        assert domain.contains(domain.from_unit(float(u)))
    assert len(set(map(str, samples))) > 1


def test_float_step_grid_is_exact_decimals():
    grid = FloatRange(low=0.0, high=0.95, step=0.05).grid(100)
    assert len(grid) == 20 and grid[7] == 0.35 and grid[-1] == 0.95


def test_contains_rejects_off_grid_and_out_of_range():
    assert not IntRange(low=4, high=64, step=4).contains(6)
    assert not IntRange(low=2, high=8).contains(9)
    assert not IntRange(low=2, high=8).contains(True)
    assert not FloatRange(low=0.0, high=0.95, step=0.05).contains(0.33)
    assert not Choice(values=(1, 2)).contains(3)


def test_nearest_snaps_to_domain():
    assert IntRange(low=2, high=8).nearest(32) == 8
    assert FloatRange(low=0.0, high=0.95, step=0.05).nearest(0.33) == 0.35
    assert Choice(values=(2, 4, 8, 32)).nearest(5) == 4
