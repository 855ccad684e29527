"""Checked settings: rules that validate one value where it was written, and dataclasses that carry them.

Settings dataclasses' fields carry their rule, so a setting is declared once (its name, type, default and
check in one line) and a file section is read and written from the dataclass alone.

    @dataclass(frozen=True, kw_only=True)
    class ExecutionSpec:
        workers: int | None = setting(None, integer(1, 100_000))

    read_settings(ExecutionSpec, value, at)   # keys = the dataclass's fields; each checked by its rule
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

from autocomp.errors import SpaceError
from autocomp.schema.yaml import LinedList, LinedMap, plain

# bounds on counts, batch sizes and seeds: far above any real use, low enough to fail here, not in torch
MAX_COUNT = 1_000_000
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class At:
    """Where a value was written: the file, its 1-based line and the dotted key path (groups by name)."""

    file: str | None = None
    line: int | None = None
    key: str = ""

    def fail(self, message: str, value: Any = None) -> SpaceError:
        """The error for the value written here."""
        return SpaceError(message, file=self.file, line=self.line, key=self.key or None, value=plain(value))

    def key_of(self, m: LinedMap, name: Any) -> At:
        """Where key `name` of mapping `m` (written here) is."""
        return At(self.file, m.key_lines.get(name, m.line), self.path(name))

    def value_of(self, m: LinedMap, name: Any) -> At:
        """Where the value of key `name` of mapping `m` (written here) is."""
        return At(self.file, m.value_lines.get(name, m.line), self.path(name))

    def item(self, items: LinedList, index: int) -> At:
        """Where item `index` of list `items` (written here) is."""
        return At(self.file, items.item_lines[index], self.path(index))

    def path(self, name: Any) -> str:
        """The key path of `name` under this one, e.g. "latency.threads"."""
        return f"{self.key}.{name}" if self.key else str(name)

    def at_key(self, key: str) -> At:
        """The same line under another key path (a group's items are named by the group's name)."""
        return At(self.file, self.line, key)


Rule = Callable[[Any, At], Any]  # (value, where) -> the checked value
T = TypeVar("T")


def is_number(value: Any) -> bool:
    """An int or float, never a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def type_name(value: Any) -> str:
    """How YAML spells the kind of `value` (not LinedMap / LinedList)."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    return "list" if isinstance(value, list) else type(value).__name__


def hint(name: Any, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# -- rules ------------------------------------------------------------------------------------------------


def string(value: Any, at: At) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise at.fail("expected a non-empty string", value)
    return value


def boolean(value: Any, at: At) -> bool:
    """True or false."""
    if not isinstance(value, bool):
        raise at.fail("expected true or false", value)
    return value


def number(value: Any, at: At) -> float:
    """A finite int or float (never a bool), as a float."""
    if not is_number(value):
        raise at.fail("expected a number", value)
    if not math.isfinite(value):
        raise at.fail("must be a finite number", value)
    return float(value)


def positive(value: Any, at: At) -> float:
    """A number > 0."""
    result = number(value, at)
    if result <= 0:
        raise at.fail("must be > 0", value)
    return result


def non_negative(value: Any, at: At) -> float:
    """A number >= 0."""
    result = number(value, at)
    if result < 0:
        raise at.fail("must be >= 0", value)
    return result


def unit(value: Any, at: At) -> float:
    """A number in [0, 1]."""
    result = number(value, at)
    if not 0 <= result <= 1:
        raise at.fail("must be in [0, 1]", value)
    return result


def integer(minimum: int | None = None, maximum: int | None = MAX_COUNT) -> Rule:
    """A rule: an integer in [minimum, maximum]."""

    def rule(value: Any, at: At) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise at.fail("expected an integer", value)
        if minimum is not None and value < minimum:
            raise at.fail(f"must be >= {minimum}", value)
        if maximum is not None and value > maximum:
            raise at.fail(f"must be <= {maximum}", value)
        return value

    return rule


def one_of(names: Collection[str] | Callable[[], Collection[str]], what: str) -> Rule:
    """A rule: one of `names` (a callable is asked each time, so names registered later count)."""

    def rule(value: Any, at: At) -> str:
        known = list(names() if callable(names) else names)
        if not isinstance(value, str) or value not in known:
            raise at.fail(f"unknown {what}{hint(value, known)}; known: {', '.join(known)}", value)
        return value

    return rule


def optional(rule: Rule) -> Rule:
    """A rule that also takes null (the setting's 'not set')."""
    return lambda value, at: None if value is None else rule(value, at)


def mapping(value: Any, at: At, allowed: Collection[str], what: str = "key") -> LinedMap:
    """`value` as a mapping whose keys are all in `allowed` (`what` names them in the error)."""
    if not isinstance(value, LinedMap):
        raise at.fail(f"expected a mapping, got {type_name(value)}", value)
    for k in value:
        if k not in allowed:
            raise at.key_of(value, k).fail(f"unknown {what} '{k}'{hint(k, allowed)}; allowed: {', '.join(allowed)}")
    return value


def require(m: LinedMap, at: At, *names: str) -> None:
    """Each of `names` is a key of `m`."""
    for name in names:
        if name not in m:
            raise At(at.file, m.line, at.path(name)).fail(f"missing required key '{name}'")


def sequence(value: Any, at: At) -> LinedList:
    """`value` as a non-empty list."""
    if not isinstance(value, LinedList):
        raise at.fail(f"expected a list, got {type_name(value)}", value)
    if not value:
        raise at.fail("must not be empty", value)
    return value


# -- settings dataclasses ----------------------------------------------------------------------------------


def setting(default: Any, rule: Rule, *, compare: bool = True) -> Any:
    """A settings field: its default and the rule a value written in a file must pass."""
    return field(default=default, compare=compare, metadata={"rule": rule})


def settings_keys(cls: type) -> tuple[str, ...]:
    """The keys a settings section allows: the dataclass's fields that carry a rule."""
    return tuple(f.name for f in fields(cls) if "rule" in f.metadata)


def read_settings(cls: type[T], value: Any, at: At) -> T:
    """A settings section: a mapping of `cls`'s keys, each checked by its field's rule."""
    keys = settings_keys(cls)
    m = mapping(value, at, keys)
    rules = {f.name: f.metadata["rule"] for f in fields(cls) if "rule" in f.metadata}  # type: ignore[arg-type]
    return cls(**{k: rules[k](v, at.value_of(m, k)) for k, v in m.items()})


def dump_settings(spec: Any, *, changed_only: bool = False) -> dict[str, Any]:
    """A settings dataclass as the mapping `read_settings` reads back (unset values left out)."""
    assert is_dataclass(spec)
    out = {}
    for f in fields(spec):
        if "rule" not in f.metadata:
            continue
        value = getattr(spec, f.name)
        default = f.default if f.default is not MISSING else None
        if value is None or (changed_only and value == default):
            continue
        out[f.name] = plain(asdict(value) if is_dataclass(value) and not isinstance(value, type) else value)
    return out
