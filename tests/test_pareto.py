import itertools
import random

import pytest

from autocomp.pareto import dominates, hypervolume, pareto_front


def test_front_mixed_directions():
    # (accuracy max, size min)
    points = [(0.9, 100), (0.95, 200), (0.85, 150), (0.95, 300), (0.8, 50)]
    assert pareto_front(points, ("maximize", "minimize")) == [0, 1, 4]
    assert dominates((0.9, 100), (0.85, 150), ("maximize", "minimize"))
    assert not dominates((0.9, 100), (0.9, 100), ("maximize", "minimize"))


def test_hypervolume_2d_known_value():
    points = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume(points, (4, 4), ("minimize", "minimize")) == pytest.approx(6.0)
    assert hypervolume([(5, 5)], (4, 4), ("minimize", "minimize")) == 0.0


def test_hypervolume_3d_matches_grid_count():
    rng = random.Random(0)
    points = [tuple(rng.randint(0, 9) for _ in range(3)) for _ in range(12)]
    exact = hypervolume(points, (10, 10, 10), ("minimize",) * 3)
    cells = sum(any(all(p[d] <= c[d] for d in range(3)) for p in points)
                for c in itertools.product(range(10), repeat=3))
    assert exact == pytest.approx(cells)


def test_hypervolume_maximize_direction():
    assert hypervolume([(0.9, 10.0)], (0.5, 20.0), ("maximize", "minimize")) == pytest.approx(0.4 * 10)
