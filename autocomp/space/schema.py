"""The `groups:` of a search-space file: read and written back.

Every problem read is a SpaceError naming file, line, key path with groups by name (e.g.
`groups.fc.primitives.prune.ratio`), and value.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from autocomp.primitives.configs import CONFIGS, KnobRange
from autocomp.schema import (
    At,
    LinedMap,
    boolean,
    integer,
    mapping,
    number,
    optional,
    positive,
    require,
    sequence,
    string,
)
from autocomp.schema.rules import is_number
from autocomp.space.groups import Group, KnobSpec, Selector, Where
from autocomp.space.params import Choice, Domain, FloatRange, IntRange

GROUP_KEYS = ("name", "layers", "shared", "primitives")
PARAM_KINDS = ("choice", "int", "float")
GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_groups(value: Any, at: At) -> tuple[Group, ...]:
    """The groups of a non-empty list written at `at`."""
    items = sequence(value, at)
    groups: list[Group] = []
    for i, item in enumerate(items):
        group = _group(item, at.item(items, i))
        if any(g.name == group.name for g in groups):
            raise at.item(items, i).value_of(item, "name").fail("duplicate group name", group.name)
        groups.append(group)
    return tuple(groups)


def dump_groups(groups: tuple[Group, ...]) -> list[dict[str, Any]]:
    """The groups as plain data `read_groups` reads back (a primitive's knobs written together)."""
    out = []
    for group in groups:
        primitives: dict[str, dict[str, Any]] = {}
        for spec in group.knobs:
            primitives.setdefault(spec.primitive, {})[spec.knob] = _dump_domain(spec.domain)
        out.append({"name": group.name, "layers": [s.text for s in group.selectors], "shared": group.shared,
                    "primitives": primitives})
    return out


def _dump_domain(domain: Domain) -> dict[str, Any]:
    if isinstance(domain, Choice):
        return {"choice": list(domain.values)}
    if isinstance(domain, IntRange):
        out: dict[str, Any] = {"int": [domain.low, domain.high]}
        if domain.step != 1:
            out["step"] = domain.step
    else:
        out = {"float": [domain.low, domain.high]}
        if domain.step is not None:
            out["step"] = domain.step
    if domain.log:
        out["log"] = True
    return out


def _group(value: Any, at: At) -> Group:
    m = mapping(value, at, GROUP_KEYS)
    require(m, at, "name", "layers", "primitives")
    name = m["name"]
    if not isinstance(name, str) or not GROUP_NAME.fullmatch(name):
        raise at.value_of(m, "name").fail("group name must match [A-Za-z_][A-Za-z0-9_]*", name)
    named = at.at_key(f"groups.{name}")  # from here on, paths name the group
    return Group(
        name=name,
        selectors=_selectors(m["layers"], named.value_of(m, "layers")),
        knobs=_primitives(m["primitives"], named.value_of(m, "primitives")),
        shared=boolean(m["shared"], named.value_of(m, "shared")) if "shared" in m else False,
        where=Where(file=at.file, line=m.line),
    )


def _selectors(value: Any, at: At) -> tuple[Selector, ...]:
    # a single selector may be written without a list
    lined = [(value, at)] if isinstance(value, str) else [(v, At(at.file, ln, at.key))
                                                         for v, ln in sequence(value, at).lined()]
    out = []
    for text, where in lined:
        string(text, where)
        if text.startswith("re:"):
            try:
                re.compile(text[3:])
            except re.error as exc:
                raise where.fail(f"invalid regular expression: {exc}", text) from None
        out.append(Selector(text=text, where=Where(file=at.file, line=where.line)))
    return tuple(out)


def _primitives(value: Any, at: At) -> tuple[KnobSpec, ...]:
    m = mapping(value, at, CONFIGS, what="primitive")
    if not m:
        raise at.fail("must list at least one primitive", value)
    knobs: list[KnobSpec] = []
    for primitive, spec in m.items():
        where = at.value_of(m, primitive)
        allowed = CONFIGS[primitive].KNOBS
        spec = mapping(spec, where, allowed, what=f"{primitive} knob")
        if not spec:
            raise where.fail(f"must set at least one knob (knobs: {', '.join(allowed)})", spec)
        for knob, param in spec.items():
            domain = _domain(param, where.value_of(spec, knob), allowed[knob])
            knobs.append(KnobSpec(primitive=primitive, knob=knob, domain=domain,
                                  where=Where(file=at.file, line=spec.key_lines[knob])))
    return tuple(knobs)


def _domain(value: Any, at: At, allowed: KnobRange) -> Domain:
    """A knob's param spec: a fixed value, or exactly one of choice / int / float."""
    if is_number(value) or isinstance(value, str):
        return Choice(values=(_knob_value(value, at, allowed),))
    if not isinstance(value, LinedMap):
        raise at.fail("expected a number or a mapping with one of: choice, int, float", value)
    kinds = [k for k in PARAM_KINDS if k in value]
    if len(kinds) != 1:
        raise at.fail("needs exactly one of: choice, int, float", value)
    kind = kinds[0]
    mapping(value, at, (kind,) if kind == "choice" else (kind, "step", "log"))
    if kind == "choice":
        return _choice(value, at, allowed)
    if allowed.kind is str:
        raise at.fail(f"this knob takes names ({allowed.describe()}): use choice", value)
    if kind == "float" and allowed.kind is int:
        raise at.fail(f"this knob takes integers ({allowed.describe()}): use int or choice", value)
    low, high, ends = _bounds(value, kind, at)
    log = boolean(value["log"], at.value_of(value, "log")) if "log" in value else False
    domain: Domain
    if kind == "int":
        step = integer(1)(value["step"], at.value_of(value, "step")) if "step" in value else 1
        if log and (low < 1 or step != 1):
            raise at.fail("a log int range needs low >= 1 and no step", value)
        if high > low and step > high - low:  # Optuna would quietly shrink the range to its low end
            raise at.fail(f"step {step} is wider than the range [{low}, {high}]", value)
        domain = IntRange(low=low, high=high, step=step, log=log)
    else:
        step = optional(positive)(value["step"], at.value_of(value, "step")) if "step" in value else None
        if log and step is not None:
            raise at.fail("a float range takes step or log, not both", value)
        if log and low <= 0:
            raise at.fail("a log float range needs low > 0", value)
        if step is not None and high > low and step > high - low:
            raise at.fail(f"step {step} is wider than the range [{low}, {high}]", value)
        domain = FloatRange(low=low, high=high, step=step, log=log)
    _check_range(low, high, ends, allowed)
    return domain


def _knob_value(value: Any, at: At, allowed: KnobRange) -> Any:
    """One value a knob may take: a name or a finite number the primitive allows."""
    if allowed.kind is str:
        if not allowed.allows(value):
            raise at.fail(f"value not allowed: {allowed.describe()}", value)
        return value
    number(value, at)
    if allowed.kind is int and not isinstance(value, int):
        raise at.fail(f"this knob takes integers ({allowed.describe()})", value)
    if not allowed.allows(value):
        raise at.fail(f"value not allowed: {allowed.describe()}", value)
    return value


def _choice(m: LinedMap, at: At, allowed: KnobRange) -> Choice:
    items = sequence(m["choice"], At(at.file, m.value_lines["choice"], f"{at.key}.choice"))
    for i, (item, line) in enumerate(items.lined()):
        where = At(at.file, line, at.key)
        _knob_value(item, where, allowed)
        if item in items[:i]:
            raise where.fail("duplicate choice", item)
    return Choice(values=tuple(items))


def _bounds(m: LinedMap, kind: str, at: At) -> tuple[Any, Any, list[At]]:
    """The [low, high] pair of an int or float range (ints stay ints, floats become floats)."""
    pair, where = m[kind], at.value_of(m, kind)
    if not isinstance(pair, list) or len(pair) != 2:
        raise where.fail("expected [low, high]", pair)
    ends = [At(at.file, line, where.key) for line in pair.item_lines]  # type: ignore[attr-defined]
    read = integer(None, None) if kind == "int" else number
    low, high = (read(v, end) for v, end in zip(pair, ends))
    if low > high:
        raise where.fail("low is greater than high", pair)
    return low, high, [At(at.file, e.line, at.key) for e in ends]


def _check_range(low: Any, high: Any, ends: list[At], allowed: KnobRange) -> None:
    """Every value of [low, high] must be allowed: both ends must lie in the knob's continuous range."""
    if low == high:
        _knob_value(low, ends[0], allowed)
        return
    # extra values (e.g. 32 bits) are isolated points: a range may not span the gap up to them
    inside = replace(allowed, extra=())
    for end, where in ((low, ends[0]), (high, ends[1])):
        if not inside.allows(end):
            hint = "; list isolated values with choice" if allowed.extra else ""
            raise where.fail(f"range end not allowed: {allowed.describe()}{hint}", end)
