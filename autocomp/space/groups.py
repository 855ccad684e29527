"""The pieces of a search space: groups of layers (picked by selectors), each with primitives' knob domains."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from autocomp.layers import KINDS, PARAMS, module_kind
from autocomp.primitives.configs import KnobRange
from autocomp.space.params import Choice, Domain, FloatRange

COMPRESSIBLE = KINDS  # layer kinds: a subclass counts as its base (autocomp.layers.layer_kind)


def domain_problem(domain: Domain, allowed: KnobRange) -> tuple[str, Any] | None:
    """Why a knob's domain reaches values its primitive rejects (message, value), or None if it does not."""
    if isinstance(domain, Choice):
        for value in domain.values:
            if not allowed.allows(value) or (allowed.kind is int and not isinstance(value, int)):
                return f"value not allowed: {allowed.describe()}", value
        return None
    if allowed.kind is str:
        return f"this knob takes names ({allowed.describe()}): use a Choice", domain
    if isinstance(domain, FloatRange) and allowed.kind is int:
        return f"this knob takes integers ({allowed.describe()})", domain
    inside = KnobRange(kind=allowed.kind, low=allowed.low, high=allowed.high, low_open=allowed.low_open,
                       high_open=allowed.high_open)  # a range may not span the gap up to an extra value
    for end in (domain.low, domain.high):
        if not inside.allows(end):
            return f"range end not allowed: {allowed.describe()}", end
    return None


@dataclass(frozen=True, kw_only=True)
class Where:
    """Where a piece of a search space was written (for error messages)."""

    file: str | None = None
    line: int | None = None


@dataclass(frozen=True, kw_only=True)
class Selector:
    """Picks layers: an exact module name, `re:<regex>` (full match) or `type:<ModuleClass>`.

    A `re:` pattern never picks a Params layer (a norm's or an embedding block's own tensors): those are
    chosen by `type:Params` or by name, so patterns written for the weight layers keep meaning those.

    `type:` matches the module's own class name or its layer kind, so `type:Linear` picks Linear subclasses
    too (MultiheadAttention's out_proj) and `type:NonDynamicallyQuantizableLinear` picks only those.
    """

    text: str
    where: Where = field(default_factory=Where, compare=False)  # where it was written is not what it is

    def matches(self, name: str, module: Any) -> bool:
        """Whether the layer `name` (the module `module`) is picked."""
        if self.text.startswith("re:"):  # a Params module (norms...) only by type:Params or its name:
            # patterns written for the weight layers keep meaning just those
            return module_kind(module) != PARAMS and re.fullmatch(self.text[3:], name) is not None
        if self.text.startswith("type:"):
            return self.text[5:] in (type(module).__name__, module_kind(module))
        return name == self.text


@dataclass(frozen=True, kw_only=True)
class KnobSpec:
    """One knob of a primitive in a group: its domain (a one-value Choice when it is fixed)."""

    primitive: str
    knob: str
    domain: Domain
    where: Where = field(default_factory=Where, compare=False)  # where it was written is not what it is


@dataclass(frozen=True, kw_only=True)
class Group:
    """Layers chosen by selectors, and the primitives searched on each of them.

    With `shared`, one parameter per knob serves every layer of the group; otherwise each layer gets its own.
    """

    name: str
    selectors: tuple[Selector, ...]
    knobs: tuple[KnobSpec, ...]
    shared: bool = False
    where: Where = field(default_factory=Where, compare=False)  # where it was written is not what it is
