"""Objectives (what a search trades off) and constraints (what a candidate must satisfy)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Metrics = Mapping[str, float]


@dataclass(frozen=True, kw_only=True)
class Objective:
    """A named value to maximize or minimize: a metric, or a user function of the metrics."""

    name: str
    direction: str = "maximize"
    fn: Callable[[Metrics], float] | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"objective '{self.name}': direction must be maximize or minimize")

    def value(self, metrics: Metrics) -> float:
        return float(self.fn(metrics) if self.fn else metrics[self.name])


@dataclass(frozen=True, kw_only=True)
class Constraint:
    """`min <= metrics[metric] <= max`; violation is the relative distance outside the bounds."""

    metric: str
    min: float | None = None
    max: float | None = None

    def violation(self, metrics: Metrics) -> float:
        value = float(metrics[self.metric])
        excess = 0.0
        if self.max is not None and value > self.max:
            excess = (value - self.max) / max(abs(self.max), 1e-12)
        if self.min is not None and value < self.min:
            excess = (self.min - value) / max(abs(self.min), 1e-12)
        return excess


def as_objectives(spec: object) -> tuple[Objective, ...]:
    """Accept a callable (one maximized objective), a metric name, an Objective, or a sequence of these."""
    if callable(spec) and not isinstance(spec, Objective):
        return (Objective(name="objective", direction="maximize", fn=spec),)
    if isinstance(spec, (str, Objective)):
        spec = [spec]
    out = []
    for item in spec:  # type: ignore[union-attr]
        if isinstance(item, Objective):
            out.append(item)
        elif isinstance(item, str):
            from autocomp.space.spec import METRICS  # metric directions live with the file schema

            out.append(Objective(name=item, direction=METRICS.get(item, "maximize")))
        elif callable(item):
            out.append(Objective(name=getattr(item, "__name__", "objective"), fn=item))
        else:
            raise TypeError(f"cannot use {item!r} as an objective")
    return tuple(out)


def evaluate_objectives(
    objectives: Sequence[Objective], constraints: Sequence[Constraint], metrics: Metrics
) -> tuple[tuple[float, ...], float]:
    """(objective values, total constraint violation). Raises ValueError on a NaN or infinite value."""
    values = tuple(o.value(metrics) for o in objectives)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"objective values not finite: {dict(zip([o.name for o in objectives], values))}")
    return values, sum(c.violation(metrics) for c in constraints)
