"""Non-dominated sorting and hypervolume, for any mix of maximized and minimized objectives."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_minimized(points: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(points, dtype=float).reshape(-1, len(directions)) * signs


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether `a` is at least as good as `b` in every objective and better in one."""
    pa, pb = _as_minimized([a, b], directions)
    return bool(np.all(pa <= pb) and np.any(pa < pb))


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point are all kept)."""
    p = _as_minimized(points, directions)
    front = []
    for i in range(len(p)):
        dominated = np.any(np.all(p <= p[i], axis=1) & np.any(p < p[i], axis=1))
        if not dominated:
            front.append(i)
    return front


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float], directions: Sequence[str]) -> float:
    """Volume dominated by `points` and bounded by `reference` (points beyond it count for nothing).

    Exact, by recursive slicing on the first objective; fine for the few objectives a search uses.
    """
    p = _as_minimized(points, directions)
    ref = _as_minimized([reference], directions)[0]
    p = p[np.all(p < ref, axis=1)]
    return _hv(p, ref)


def _hv(p: np.ndarray, ref: np.ndarray) -> float:
    if len(p) == 0:
        return 0.0
    if p.shape[1] == 1:
        return float(ref[0] - p[:, 0].min())
    p = p[np.argsort(p[:, 0])]
    volume = 0.0
    for i in range(len(p)):
        width = (p[i + 1, 0] if i + 1 < len(p) else ref[0]) - p[i, 0]
        if width > 0:
            volume += width * _hv(p[: i + 1, 1:], ref[1:])
    return volume
