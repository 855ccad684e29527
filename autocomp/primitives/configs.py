"""Frozen configs of the compression primitives, and the range each knob allows.

Pure Python (no torch): the space loader validates against `KNOBS`, and policies hold these objects.
`STAGES` is the fixed order in which `compress` applies primitives to a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True, kw_only=True)
class KnobRange:
    """What values a primitive accepts for one knob (a search range must stay inside it)."""

    kind: type  # int or float
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    extra: tuple[Any, ...] = ()  # allowed values outside [low, high], e.g. 32 bits = "keep fp32"

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if value in self.extra:
            return True
        if self.kind is int and int(value) != value:
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        text = f"{self.kind.__name__} in {lo}{self.low:g}, {self.high:g}{hi}"
        return text + (f" or one of {list(self.extra)}" if self.extra else "")


@dataclass(frozen=True, kw_only=True)
class PrimitiveConfig:
    """Base of every primitive config. Subclasses set NAME and KNOBS."""

    NAME: ClassVar[str] = ""
    KNOBS: ClassVar[dict[str, KnobRange]] = {}
    APPLIES_TO: ClassVar[tuple[str, ...]] = ("Linear", "Conv2d")  # module class names

    def is_identity(self) -> bool:
        raise NotImplementedError

    def knobs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class LowRank(PrimitiveConfig):
    """Truncated SVD of a Linear layer into two: rank = ceil(rank_ratio * min(in, out)).

    Skipped (the layer is left whole) where the two factors would not hold fewer weights.
    """

    NAME: ClassVar[str] = "lowrank"
    APPLIES_TO: ClassVar[tuple[str, ...]] = ("Linear",)
    KNOBS: ClassVar[dict[str, KnobRange]] = {"rank_ratio": KnobRange(kind=float, low=0.0, high=1.0, low_open=True)}
    rank_ratio: float = 1.0

    def is_identity(self) -> bool:
        return self.rank_ratio >= 1.0


@dataclass(frozen=True, kw_only=True)
class Prune(PrimitiveConfig):
    """Unstructured magnitude pruning: zero the `ratio` fraction of a layer's weights smallest in magnitude."""

    NAME: ClassVar[str] = "prune"
    KNOBS: ClassVar[dict[str, KnobRange]] = {"ratio": KnobRange(kind=float, low=0.0, high=1.0, high_open=True)}
    ratio: float = 0.0

    def is_identity(self) -> bool:
        return self.ratio <= 0.0


@dataclass(frozen=True, kw_only=True)
class Quantize(PrimitiveConfig):
    """Symmetric per-output-channel weight quantization to `bits` (32 keeps fp32)."""

    NAME: ClassVar[str] = "quantize"
    KNOBS: ClassVar[dict[str, KnobRange]] = {"bits": KnobRange(kind=int, low=2, high=8, extra=(32,))}
    bits: int = 32

    def is_identity(self) -> bool:
        return self.bits >= 32


# the order compress() applies them in: factorise first (it changes shapes), then zero, then round
STAGES: tuple[type[PrimitiveConfig], ...] = (LowRank, Prune, Quantize)
CONFIGS: dict[str, type[PrimitiveConfig]] = {cls.NAME: cls for cls in STAGES}
