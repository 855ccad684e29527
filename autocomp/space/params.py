"""Parameter kinds of a search space: what one knob may take. Pure Python, no torch, so optimizers use them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Choice:
    """One of a fixed list of values (numbers or strings)."""

    values: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        """A uniformly random value from the list."""
        return self.values[int(rng.integers(len(self.values)))]

    def contains(self, value: Any) -> bool:
        """Whether `value` is one of the listed values."""
        return value in self.values

    def grid(self, max_points: int = 10) -> list[Any]:
        """All the listed values: a choice is already finite, so `max_points` is not applied."""
        return list(self.values)

    def nearest(self, value: Any) -> Any:
        """The listed value closest to `value`: itself if listed, else the nearest number, else the first value."""
        if value in self.values:
            return value
        numeric = [v for v in self.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if isinstance(value, (int, float)) and numeric:
            return min(numeric, key=lambda v: abs(v - value))
        return self.values[0]

    def to_unit(self, value: Any) -> float:
        """Position in [0, 1] (the index, spread evenly): used by optimizers that work on a cube."""
        return (self.values.index(value) + 0.5) / len(self.values)

    def from_unit(self, u: float) -> Any:
        """The value whose slot in [0, 1] holds `u` (the inverse of `to_unit`)."""
        return self.values[min(int(u * len(self.values)), len(self.values) - 1)]


@dataclass(frozen=True, kw_only=True)
class IntRange:
    """An integer in [low, high] (both inclusive), on a grid of `step`, optionally log-spaced."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def _count(self) -> int:
        return (self.high - self.low) // self.step + 1


    def sample(self, rng: np.random.Generator) -> int:
        """A random grid value: uniform over the grid, or log-uniform snapped to it when `log`."""
        if self.log:
            return self.nearest(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return self.low + self.step * int(rng.integers(self._count()))

    def contains(self, value: Any) -> bool:
        """Whether `value` is an integer in range and on the step grid."""
        return bool(
            isinstance(value, (int, np.integer))
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )

    def grid(self, max_points: int = 10) -> list[int]:
        """Up to `max_points` grid values, evenly spread from low to high."""
        n = self._count()
        picks = range(n) if n <= max_points else np.unique(np.round(np.linspace(0, n - 1, max_points)))
        return [self.low + int(i) * self.step for i in picks]

    def nearest(self, value: float) -> int:
        """The grid value closest to `value`, clamped into range."""
        k = min(max(round((value - self.low) / self.step), 0), self._count() - 1)
        return self.low + int(k) * self.step

    def to_unit(self, value: int) -> float:
        """Linear position of `value` in [0, 1] (0.5 when the range is a single value)."""
        return 0.5 if self.high == self.low else (value - self.low) / (self.high - self.low)

    def from_unit(self, u: float) -> int:
        """The grid value at linear position `u` in [0, 1] (the inverse of `to_unit`)."""
        return self.nearest(self.low + u * (self.high - self.low))


@dataclass(frozen=True, kw_only=True)
class FloatRange:
    """A float in [low, high], continuous or on a grid of `step`, optionally log-uniform."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def sample(self, rng: np.random.Generator) -> float:
        """A random value, uniform or log-uniform, snapped to the step grid if there is one."""
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return self.nearest(value) if self.step else float(value)

    def contains(self, value: Any) -> bool:
        """Whether `value` is a number in range (and on the step grid if there is one), up to rounding."""
        if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool):
            return False
        if not self.low - 1e-12 <= value <= self.high + 1e-12:
            return False
        if self.step:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-6
        return True

    def grid(self, max_points: int = 10) -> list[float]:
        """Up to `max_points` values, low to high: step points if stepped, else evenly (or log-) spaced."""
        if self.step:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            picks = range(n) if n <= max_points else np.unique(np.round(np.linspace(0, n - 1, max_points)))
            return [self._snap(self.low + int(i) * self.step) for i in picks]
        if self.log:
            return [float(v) for v in np.geomspace(self.low, self.high, max_points)]
        return [float(v) for v in np.linspace(self.low, self.high, max_points)]

    def _snap(self, value: float) -> float:
        # 12 decimals: a grid value prints as written in the YAML (0.35, not 0.35000000000000003)
        return round(min(max(value, self.low), self.high), 12)

    def nearest(self, value: float) -> float:
        """`value` clamped into range, snapped to the step grid if there is one."""
        value = min(max(float(value), self.low), self.high)
        if not self.step:
            return value
        return self._snap(self.low + round((value - self.low) / self.step) * self.step)

    def to_unit(self, value: float) -> float:
        """Position of `value` in [0, 1], linear or on a log scale when `log` (0.5 when the range is a single value)."""
        if self.high == self.low:
            return 0.5
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, u: float) -> float:
        """The value at position `u` in [0, 1], on the same scale as `to_unit` (its inverse)."""
        if self.log:
            return self.nearest(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))
        return self.nearest(self.low + u * (self.high - self.low))


Domain = Choice | IntRange | FloatRange


@dataclass(frozen=True, kw_only=True)
class Param:
    """One searchable knob bound to a layer (or to a group of layers sharing it).

    `name` is unique in a space: "<layer>.<primitive>.<knob>" (or "<group>.<primitive>.<knob>" when shared).
    `knob` is "<primitive>.<knob>", the same for every layer, so the uniform policy can tie them together.
    `compresses` says which way compresses more: +1 larger values, -1 smaller values, 0 neither (a name).
    """

    name: str
    domain: Domain
    primitive: str
    knob: str
    layers: tuple[str, ...]
    compresses: int = 0

    def ordered(self, max_points: int = 10) -> list[Any]:
        """The domain's grid (at most `max_points` values for a range) from least to most compressive."""
        values = self.domain.grid(max_points)
        if self.compresses and all(isinstance(v, (int, float)) for v in values):
            return sorted(values, reverse=self.compresses < 0)
        return values

    def least_compressive(self) -> Any:
        """The value that compresses least: the first of `ordered()`."""
        return self.ordered()[0]

    def sample(self, rng: np.random.Generator) -> Any:
        """A random value from the domain."""
        return self.domain.sample(rng)
