"""SearchSpace (groups of layers, each with primitives and knob domains) and its binding to a model."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autocomp.errors import SpaceError
from autocomp.primitives.configs import CONFIGS, KnobRange
from autocomp.space.params import Choice, Domain, FloatRange, Param

COMPRESSIBLE = ("Linear", "Conv2d")


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
    """Picks layers: an exact module name, `re:<regex>` (full match) or `type:<ModuleClass>`."""

    text: str
    where: Where = field(default_factory=Where)

    def matches(self, name: str, module: Any) -> bool:
        if self.text.startswith("re:"):
            return re.fullmatch(self.text[3:], name) is not None
        if self.text.startswith("type:"):
            return type(module).__name__ == self.text[5:]
        return name == self.text


@dataclass(frozen=True, kw_only=True)
class KnobSpec:
    """One knob of a primitive in a group: its domain (a one-value Choice when it is fixed)."""

    primitive: str
    knob: str
    domain: Domain
    where: Where = field(default_factory=Where)


@dataclass(frozen=True, kw_only=True)
class Group:
    """Layers chosen by selectors, and the primitives searched on each of them.

    With `shared`, one parameter per knob serves every layer of the group; otherwise each layer gets its own.
    """

    name: str
    selectors: tuple[Selector, ...]
    knobs: tuple[KnobSpec, ...]
    shared: bool = False
    where: Where = field(default_factory=Where)


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """What may be searched, before it is bound to a concrete model."""

    groups: tuple[Group, ...]

    def bind(self, model: Any) -> BoundSpace:
        """Resolve selectors against `model` (an nn.Module) into named, typed per-layer params."""
        modules = [(n, m) for n, m in model.named_modules() if type(m).__name__ in COMPRESSIBLE]
        owner: dict[tuple[str, str], str] = {}  # (layer, primitive) -> the one group that configures it
        params: list[Param] = []
        for group in self.groups:
            layers: list[str] = []
            for selector in group.selectors:
                hits = [n for n, m in modules if selector.matches(n, m)]
                if not hits:
                    names = ", ".join(n for n, _ in modules) or "none"
                    raise SpaceError(
                        f"selector matches no compressible layer (the model's are: {names})",
                        file=selector.where.file, line=selector.where.line,
                        key=f"groups.{group.name}.layers", value=selector.text,
                    )
                layers += [n for n in hits if n not in layers]
            types = dict(modules)
            primitives = dict.fromkeys(spec.primitive for spec in group.knobs)
            for layer in layers:  # two groups may select a layer for different primitives, never the same one
                for primitive in primitives:
                    first = owner.setdefault((layer, primitive), group.name)
                    if first != group.name:
                        raise SpaceError(
                            f"layer '{layer}' is selected by two groups ('{first}' and '{group.name}') for "
                            f"primitive '{primitive}'", file=group.where.file, line=group.where.line,
                            key=f"groups.{group.name}.layers", value=layer,
                        )
            for spec in group.knobs:
                key = f"groups.{group.name}.primitives.{spec.primitive}.{spec.knob}"
                if spec.primitive not in CONFIGS or spec.knob not in CONFIGS[spec.primitive].KNOBS:
                    raise SpaceError("unknown primitive or knob", file=spec.where.file, line=spec.where.line,
                                     key=key, value=f"{spec.primitive}.{spec.knob}")
                problem = domain_problem(spec.domain, CONFIGS[spec.primitive].KNOBS[spec.knob])
                if problem:  # the YAML loader checks this too; spaces built in Python meet it here
                    raise SpaceError(problem[0], file=spec.where.file, line=spec.where.line, key=key,
                                     value=problem[1])
                allowed = CONFIGS[spec.primitive].APPLIES_TO
                for layer in layers:
                    kind = type(types[layer]).__name__
                    if kind not in allowed:
                        raise SpaceError(
                            f"primitive '{spec.primitive}' applies to {'/'.join(allowed)} layers, "
                            f"but '{layer}' is a {kind}",
                            file=spec.where.file, line=spec.where.line,
                            key=f"groups.{group.name}.primitives.{spec.primitive}", value=layer,
                        )
                knob = f"{spec.primitive}.{spec.knob}"
                compresses = CONFIGS[spec.primitive].KNOBS[spec.knob].compresses
                if group.shared:
                    params.append(Param(name=f"{group.name}.{knob}", domain=spec.domain,
                                        primitive=spec.primitive, knob=knob, layers=tuple(layers),
                                        compresses=compresses))
                else:
                    params += [Param(name=f"{layer}.{knob}", domain=spec.domain, primitive=spec.primitive,
                                     knob=knob, layers=(layer,), compresses=compresses) for layer in layers]
        names = [p.name for p in params]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SpaceError(f"parameter names collide: {duplicates} (give groups distinct names)")
        return BoundSpace(params=tuple(params), layers=tuple(dict.fromkeys(layer for layer, _ in owner)))


@dataclass(frozen=True)
class BoundSpace:
    """A space bound to one model: the flat list of parameters an optimizer searches."""

    params: tuple[Param, ...]
    layers: tuple[str, ...]

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {p.name: p.sample(rng) for p in self.params}

    def contains(self, candidate: Mapping[str, Any]) -> bool:
        return set(candidate) == {p.name for p in self.params} and all(
            p.domain.contains(candidate[p.name]) for p in self.params
        )

    def knobs(self) -> dict[str, list[Param]]:
        """Params grouped by "<primitive>.<knob>": the same knob on different layers."""
        out: dict[str, list[Param]] = {}
        for p in self.params:
            out.setdefault(p.knob, []).append(p)
        return out
