"""Objectives (what a search trades off) and constraints (what a candidate must satisfy)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Metrics = Mapping[str, float]

# metrics an objective or constraint may name in a run file, with the direction that is better
METRICS: dict[str, str] = {
    "accuracy": "maximize",
    "accuracy_drop": "minimize",
    "size_bytes": "minimize",
    "compression_ratio": "maximize",
    "params": "minimize",
    "flops": "minimize",
    "flops_sparse": "minimize",
    "params_stored": "minimize",
    "latency_ms": "minimize",
    "peak_activation_bytes": "minimize",
    "energy_uj": "minimize",
    # the built-in tasks' metrics (autocomp.tasks): classification, language-model, regression
    "top5_accuracy": "maximize",
    "perplexity": "minimize",
    "token_accuracy": "maximize",
    "loss": "minimize",
    "mse": "minimize",
    "mae": "minimize",
}
DIRECTIONS = ("maximize", "minimize")
# a bound relative to the uncompressed model: "0.5x" is half the baseline's value
RELATIVE = re.compile(r"(\d+(\.\d*)?|\.\d+)(e-?\d+)?x")


def parse_bound(bound: float | str) -> float:
    """The number in a bound: 3.0 for 3.0, 0.5 for "0.5x"."""
    return float(bound[:-1]) if isinstance(bound, str) else float(bound)


@dataclass(frozen=True, kw_only=True)
class Objective:
    """A named value to maximize or minimize: a metric, or a user function of the metrics."""

    name: str
    direction: str = "maximize"
    fn: Callable[[Metrics], float] | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"objective '{self.name}': direction must be maximize or minimize")

    def value(self, metrics: Metrics) -> float:
        """This objective's value for a trial's metrics."""
        return float(self.fn(metrics) if self.fn else metrics[self.name])


@dataclass(frozen=True, kw_only=True)
class Constraint:
    """`min <= metrics[metric] <= max`; violation is the relative distance outside the bounds.

    A bound may be a fraction of the uncompressed model's value, written "0.5x" (`latency_ms: {max: 0.5x}`):
    `resolved(baseline)` turns it into a number once the baseline is measured.
    """

    metric: str
    min: float | str | None = None
    max: float | str | None = None

    def resolved(self, baseline: Metrics) -> Constraint:
        """This constraint with relative bounds as numbers (fractions of `baseline[metric]`)."""

        def absolute(bound: float | str | None) -> float | None:
            if not isinstance(bound, str):
                return bound
            if self.metric not in baseline:
                raise ValueError(f"constraint on '{self.metric}': bound {bound} is relative to the baseline, "
                                 "which has no such metric")
            return parse_bound(bound) * float(baseline[self.metric])

        return Constraint(metric=self.metric, min=absolute(self.min), max=absolute(self.max))

    def violation(self, metrics: Metrics) -> float:
        """How far `metrics` lie outside the bounds, relative to the bound (0 inside)."""
        if isinstance(self.min, str) or isinstance(self.max, str):
            raise ValueError(f"constraint on '{self.metric}' has a relative bound: resolve it with the baseline")
        value = float(metrics[self.metric])
        excess = 0.0
        if self.max is not None and value > self.max:
            excess = (value - self.max) / max(abs(self.max), 1e-12)
        if self.min is not None and value < self.min:
            excess = (self.min - value) / max(abs(self.min), 1e-12)
        return excess


def as_objectives(spec: Any, known: Mapping[str, str] | None = None) -> tuple[Objective, ...]:
    """Accept a callable (one maximized objective), a metric name, an Objective, or a sequence of these.

    A metric name's direction is the one `known` (a task's metrics) or `METRICS` gives it; maximize if neither.
    """
    directions = {**METRICS, **(known or {})}
    if callable(spec) and not isinstance(spec, Objective):
        return (Objective(name="objective", direction="maximize", fn=spec),)
    if isinstance(spec, (str, Objective)):
        spec = [spec]
    out = []
    for item in spec:
        if isinstance(item, Objective):
            out.append(item)
        elif isinstance(item, str):
            out.append(Objective(name=item, direction=directions.get(item, "maximize")))
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
