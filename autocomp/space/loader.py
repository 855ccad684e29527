"""Read and write search-space files (YAML, schema version 1) as `RunSpec` objects.

Every problem in a file becomes a `SpaceError` naming the file, the 1-based line, the dotted key path
(groups by name, e.g. `groups.fc.primitives.prune.ratio`) and the offending value.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import yaml

from autocomp.errors import SpaceError
from autocomp.primitives.configs import CONFIGS, KnobRange
from autocomp.space.params import Choice, Domain, FloatRange, IntRange
from autocomp.space.space import Group, KnobSpec, SearchSpace, Selector, Where
from autocomp.space.spec import (
    EARLY_STOP_RULES,
    EXECUTORS,
    FINETUNE_OPTIMIZERS,
    FINETUNE_SCHEDULES,
    METRICS,
    RELATIVE,
    RUNTIMES,
    ArtifactSpec,
    ConstraintSpec,
    DataSpec,
    ExecutionSpec,
    FineTuneSpec,
    LatencySpec,
    ModelSpec,
    ObjectiveSpec,
    OptimizerSpec,
    RunSpec,
    TrainSpec,
    parse_bound,
)

VERSION = 1
TOP_KEYS = ("version", "model", "data", "train", "finetune", "latency", "artifact", "optimizer", "execution",
            "objectives", "constraints", "groups")
ARTIFACT_KEYS = ("entropy",)
MODEL_KEYS = ("name", "kwargs", "weights")
DATA_KEYS = ("name", "dir", "val_fraction", "batch_size")
TRAIN_KEYS = ("epochs", "lr", "batch_size", "seed")
LATENCY_KEYS = ("batch_size", "threads", "warmup", "repeats", "runtime", "table")
FINETUNE_KEYS = ("epochs", "steps", "batch_size", "lr", "optimizer", "schedule", "kd_alpha", "temperature", "seed",
                 "l1", "group_lasso", "early_stop", "min_epochs", "eta", "startup")
EXECUTION_KEYS = ("executor", "workers", "threads", "address", "num_cpus", "num_gpus", "timeout", "retries")
GROUP_KEYS = ("name", "layers", "shared", "primitives")
PARAM_KINDS = ("choice", "int", "float")
DIRECTIONS = ("maximize", "minimize")
# bounds on counts, batch sizes and seeds: far above any real use, low enough to fail here, not in torch
MAX_COUNT = 1_000_000
MAX_SEED = 2**32 - 1
GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---------------------------------------------------------------------------------------------------------
# YAML with line numbers


class _Map(dict):
    """A YAML mapping that remembers its own line and the line of each key and value (1-based)."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.value_lines: dict[Any, int] = {}


class _Seq(list):
    """A YAML sequence that remembers its own line and the line of each item (1-based)."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []

    def lined(self) -> list[tuple[Any, int]]:
        """(item, line) pairs."""
        return list(zip(self, self.item_lines, strict=True))


def _line(node_or_mark: Any) -> int:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return mark.line + 1


class _Loader(yaml.SafeLoader):
    """SafeLoader that records lines, rejects duplicate keys and rejects anchors/aliases."""

    file = "<string>"

    def compose_node(self, parent: Any, index: Any) -> Any:
        # refuse before composing: an alias "bomb" never gets to expand
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise SpaceError("anchors and aliases are not supported", file=self.file,
                             line=_line(event), value=f"{sign}{event.anchor}")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = True) -> _Map:
        # no flatten_mapping: a `<<` merge key is just an unknown key to the schema
        out = _Map(_line(node))
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpaceError("mapping keys must be plain names", file=self.file, line=_line(key_node))
            key = self.construct_object(key_node, deep=True)
            if key in out:
                raise SpaceError(f"duplicate key '{key}' (lines {out.key_lines[key]} and {_line(key_node)})",
                                 file=self.file, line=_line(key_node), key=str(key))
            out[key] = self.construct_object(value_node, deep=True)
            out.key_lines[key], out.value_lines[key] = _line(key_node), _line(value_node)
        return out

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = True) -> _Seq:
        out = _Seq(_line(node))
        for item in node.value:
            out.append(self.construct_object(item, deep=True))
            out.item_lines.append(_line(item))
        return out


_Loader.add_constructor("tag:yaml.org,2002:map", lambda loader, node: loader.construct_mapping(node))
_Loader.add_constructor("tag:yaml.org,2002:seq", lambda loader, node: loader.construct_sequence(node))
# YAML 1.1 reads `1e-3` (no dot) as a string; people write learning rates that way, so read it as a float
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(text: str, file: str) -> Any:
    loader = None
    try:
        loader = _Loader(text)  # it checks the characters first: a NUL or a control byte fails here
        loader.file = file
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise SpaceError(f"invalid YAML: {problem}", file=file, line=_line(mark) if mark else None) from None
    except yaml.reader.ReaderError as exc:
        raise SpaceError(f"invalid YAML: character {exc.character:#06x} is not allowed", file=file,
                         line=text[: exc.position].count("\n") + 1) from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"invalid YAML: {' '.join(str(exc).split())}", file=file) from None
    except RecursionError:
        raise SpaceError("invalid YAML: nested too deeply", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()


# ---------------------------------------------------------------------------------------------------------
# public API


def load_run_spec(
    path: str | os.PathLike[str], *, models: Iterable[str] = (), datasets: Iterable[str] = ()
) -> RunSpec:
    """Read a search-space YAML file.

    Args:
        path: The file to read.
        models: Known model names (the zoo's); empty means any name is accepted.
        datasets: Known dataset names; empty means any name is accepted.

    Returns:
        The RunSpec the file describes, with `source=str(path)`.

    Raises:
        SpaceError: The file cannot be read or is invalid.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"cannot read the file: {exc}", file=file) from None
    return parse_run_spec(text, file=file, models=models, datasets=datasets)


def parse_run_spec(
    text: str, *, file: str = "<string>", models: Iterable[str] = (), datasets: Iterable[str] = ()
) -> RunSpec:
    """Parse search-space YAML text.

    Args:
        text: The YAML text.
        file: The name used in error messages and as `source`; relative paths in the text are resolved
            against its directory unless it is a pseudo-name like "<string>".
        models: Known model names; empty means any name is accepted.
        datasets: Known dataset names; empty means any name is accepted.

    Returns:
        The RunSpec the text describes.

    Raises:
        SpaceError: The text is invalid.
    """
    return _Parser(file, models=tuple(models), datasets=tuple(datasets)).run_spec(_read_yaml(text, file))


def dump_run_spec(spec: RunSpec) -> str:
    """Write a RunSpec as version-1 YAML that `parse_run_spec` reads back to an equal spec.

    `where` and `source` are not written. Knobs of one primitive in a group are written together.

    Args:
        spec: The spec to write.

    Returns:
        The YAML text.
    """
    model: dict[str, Any] = {"name": spec.model.name}
    if spec.model.kwargs:
        model["kwargs"] = _plain(spec.model.kwargs)
    if spec.model.weights is not None:
        model["weights"] = spec.model.weights
    doc: dict[str, Any] = {
        "version": VERSION,
        "model": model,
        "data": asdict(spec.data),
        "train": asdict(spec.train),
        "latency": asdict(spec.latency),
        "artifact": asdict(spec.artifact),
        "objectives": [{"metric": o.metric, "direction": o.direction} for o in spec.objectives],
    }
    if spec.constraints:
        doc["constraints"] = {
            c.metric: {k: v for k, v in (("min", c.min), ("max", c.max)) if v is not None}
            for c in spec.constraints
        }
    if spec.optimizer.name or spec.optimizer.settings:
        block: dict[str, Any] = {"name": spec.optimizer.name} if spec.optimizer.name else {}
        block.update({k: _plain(v) for k, v in spec.optimizer.settings.items()})
        doc["optimizer"] = block
    if spec.finetune != FineTuneSpec():
        doc["finetune"] = {k: v for k, v in asdict(spec.finetune).items() if v is not None}
    if spec.execution != ExecutionSpec():
        doc["execution"] = {k: v for k, v in asdict(spec.execution).items() if v is not None}
    doc["groups"] = [_dump_group(g) for g in spec.space.groups]
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


def _dump_group(group: Group) -> dict[str, Any]:
    primitives: dict[str, dict[str, Any]] = {}
    for spec in group.knobs:
        primitives.setdefault(spec.primitive, {})[spec.knob] = _dump_domain(spec.domain)
    return {"name": group.name, "layers": [s.text for s in group.selectors], "shared": group.shared,
            "primitives": primitives}


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


def _plain(value: Any) -> Any:
    """Plain dicts/lists (safe_dump cannot write tuples, and parsed values carry line info)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------
# schema


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    """How the YAML spells the kind of `value` (not our internal _Map/_Seq)."""
    if value is None:
        return "null"
    return {_Map: "mapping", _Seq: "list"}.get(type(value), type(value).__name__)


def _hint(name: Any, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_Rule = Callable[[Any, int, str], Any]  # (value, line, key path) -> checked value


class _Parser:
    """Turns the parsed YAML (with line info) into a RunSpec, one small method per schema section."""

    def __init__(self, file: str, *, models: tuple[str, ...], datasets: tuple[str, ...]) -> None:
        self.file = file
        self.models = models
        self.datasets = datasets
        # "<string>" and the like are not paths: keep relative paths as written
        self.base = None if file.startswith("<") else os.path.dirname(os.path.abspath(file))

    def fail(self, message: str, *, line: int | None, key: str | None = None, value: Any = None
             ) -> SpaceError:
        return SpaceError(message, file=self.file, line=line, key=key, value=_plain(value))

    # -- generic checks ----------------------------------------------------------------------------------

    def mapping(self, value: Any, line: int, key: str, allowed: Collection[str], what: str = "key") -> _Map:
        """Check `value` is a mapping whose keys are all in `allowed` (`what` names them in the error)."""
        if not isinstance(value, _Map):
            raise self.fail(f"expected a mapping, got {_type_name(value)}", line=line, key=key,
                            value=value)
        for k in value:
            if k not in allowed:
                raise self.fail(f"unknown {what} '{k}'{_hint(k, allowed)}; allowed: {', '.join(allowed)}",
                                line=value.key_lines[k], key=f"{key}.{k}" if key else str(k))
        return value

    def optional(self, m: _Map, name: str, key: str, rule: _Rule, default: Any) -> Any:
        """`m[name]` checked by `rule`, or `default` when it is absent."""
        return rule(m[name], m.value_lines[name], f"{key}.{name}") if name in m else default

    def require(self, m: _Map, key: str, *names: str) -> None:
        for name in names:
            if name not in m:
                raise self.fail(f"missing required key '{name}'", line=m.line,
                                key=f"{key}.{name}" if key else name)

    def sequence(self, value: Any, line: int, key: str) -> _Seq:
        """Check `value` is a non-empty list."""
        if not isinstance(value, _Seq):
            raise self.fail(f"expected a list, got {_type_name(value)}", line=line, key=key, value=value)
        if not value:
            raise self.fail("must not be empty", line=line, key=key, value=value)
        return value

    def string(self, value: Any, line: int, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail("expected a non-empty string", line=line, key=key, value=value)
        return value

    def boolean(self, value: Any, line: int, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail("expected true or false", line=line, key=key, value=value)
        return value

    def integer(self, value: Any, line: int, key: str, minimum: int | None = None,
                maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail("expected an integer", line=line, key=key, value=value)
        if minimum is not None and value < minimum:
            raise self.fail(f"must be >= {minimum}", line=line, key=key, value=value)
        if maximum is not None and value > maximum:
            raise self.fail(f"must be <= {maximum}", line=line, key=key, value=value)
        return value

    def at_least(self, minimum: int, maximum: int = MAX_COUNT) -> _Rule:
        """A rule for `fields`: an integer in [minimum, maximum]."""
        return lambda value, line, key: self.integer(value, line, key, minimum=minimum, maximum=maximum)

    def number(self, value: Any, line: int, key: str) -> float:
        """A finite int or float (never a bool), as a float."""
        if not _is_number(value):
            raise self.fail("expected a number", line=line, key=key, value=value)
        if not math.isfinite(value):
            raise self.fail("must be a finite number", line=line, key=key, value=value)
        return float(value)

    def non_negative(self, value: Any, line: int, key: str) -> float:
        number = self.number(value, line, key)
        if number < 0:
            raise self.fail("must be >= 0", line=line, key=key, value=value)
        return number

    def one_of(self, names: Collection[str], what: str) -> _Rule:
        """A rule for `fields`: one of `names`."""
        def rule(value: Any, line: int, key: str) -> str:
            if value not in names:
                raise self.fail(f"unknown {what}; known: {', '.join(names)}", line=line, key=key, value=value)
            return value
        return rule

    def path(self, value: Any, line: int, key: str) -> str:
        """A file path; a relative one is resolved against the YAML file's directory."""
        text = os.path.expanduser(self.string(value, line, key))
        if self.base is None or os.path.isabs(text):
            return text
        return os.path.normpath(os.path.join(self.base, text))

    def fields(self, m: _Map, key: str, rules: Mapping[str, _Rule]) -> dict[str, Any]:
        """Check each present key of `m` with its rule; return the converted values."""
        return {k: rules[k](v, m.value_lines[k], f"{key}.{k}") for k, v in m.items()}

    # -- sections ----------------------------------------------------------------------------------------

    def run_spec(self, doc: Any) -> RunSpec:
        if doc is None:
            raise self.fail("the file is empty", line=None)
        if not isinstance(doc, _Map):
            raise self.fail(f"expected a mapping at the top level, got {_type_name(doc)}", line=1,
                            value=doc)
        self.mapping(doc, doc.line, "", TOP_KEYS)
        self.require(doc, "", "version", "model", "data", "groups")
        version = doc["version"]
        if type(version) is not int or version != VERSION:  # type(): `true` must not pass for 1
            raise self.fail(f"unsupported version (this autocomp reads version {VERSION})",
                            line=doc.value_lines["version"], key="version", value=version)
        extra: dict[str, Any] = {}
        sections = (("train", self.train), ("finetune", self.finetune), ("latency", self.latency),
                    ("artifact", self.artifact), ("optimizer", self.optimizer), ("execution", self.execution),
                    ("objectives", self.objectives), ("constraints", self.constraints))
        for name, read in sections:
            if name in doc:
                extra[name] = read(doc[name], doc.value_lines[name], name)
        return RunSpec(
            model=self.model(doc["model"], doc.value_lines["model"], "model"),
            data=self.data(doc["data"], doc.value_lines["data"], "data"),
            space=self.space(doc["groups"], doc.value_lines["groups"], "groups"),
            source=self.file,
            **extra,
        )

    def model(self, value: Any, line: int, key: str) -> ModelSpec:
        m = self.mapping(value, line, key, MODEL_KEYS)
        self.require(m, key, "name")
        name = self.string(m["name"], m.value_lines["name"], f"{key}.name")
        # "module:attr" names a factory outside the zoo
        if self.models and ":" not in name and name not in self.models:
            known = ", ".join(sorted(self.models))
            raise self.fail(f"unknown model{_hint(name, self.models)}; known: {known}",
                            line=m.value_lines["name"], key=f"{key}.name", value=name)
        kwargs: dict[str, Any] = {}
        if "kwargs" in m:
            raw = m["kwargs"]
            if not isinstance(raw, _Map):
                raise self.fail("expected a mapping", line=m.value_lines["kwargs"], key=f"{key}.kwargs",
                                value=raw)
            for k in raw:
                if not isinstance(k, str):
                    raise self.fail("keyword argument names must be strings", line=raw.key_lines[k],
                                    key=f"{key}.kwargs", value=k)
            kwargs = _plain(raw)
        weights = self.optional(m, "weights", key, self.path, None)
        return ModelSpec(name=name, kwargs=kwargs, weights=weights)

    def data(self, value: Any, line: int, key: str) -> DataSpec:
        m = self.mapping(value, line, key, DATA_KEYS)
        self.require(m, key, "name")
        kw = self.fields(m, key, {
            "name": self.string,
            "dir": lambda v, ln, k: None if v is None else self.path(v, ln, k),
            "val_fraction": self.fraction,
            "batch_size": self.at_least(1),
        })
        if self.datasets and kw["name"] not in self.datasets:
            known = ", ".join(sorted(self.datasets))
            raise self.fail(f"unknown dataset{_hint(kw['name'], self.datasets)}; known: {known}",
                            line=m.value_lines["name"], key=f"{key}.name", value=kw["name"])
        return DataSpec(**kw)

    def fraction(self, value: Any, line: int, key: str) -> float:
        number = self.number(value, line, key)
        if not 0 < number <= 0.5:
            raise self.fail("must be in (0, 0.5]", line=line, key=key, value=value)
        return number

    def bound(self, value: Any, line: int, key: str) -> float | str:
        """A number, or a positive fraction of the uncompressed model's value: "0.5x"."""
        if isinstance(value, str):
            if RELATIVE.fullmatch(value.strip()) and parse_bound(value.strip()) > 0:
                return value.strip()
            raise self.fail('expected a number or a fraction of the baseline such as "0.5x"', line=line, key=key,
                            value=value)
        return self.number(value, line, key)

    def positive(self, value: Any, line: int, key: str) -> float:
        number = self.number(value, line, key)
        if number <= 0:
            raise self.fail("must be > 0", line=line, key=key, value=value)
        return number

    def train(self, value: Any, line: int, key: str) -> TrainSpec:
        m = self.mapping(value, line, key, TRAIN_KEYS)
        rules = {"epochs": self.at_least(1), "lr": self.positive, "batch_size": self.at_least(1),
                 "seed": self.at_least(0, MAX_SEED)}
        return TrainSpec(**self.fields(m, key, rules))

    def finetune(self, value: Any, line: int, key: str) -> FineTuneSpec:
        m = self.mapping(value, line, key, FINETUNE_KEYS)

        def weight(v: Any, ln: int, k: str) -> float:
            number = self.number(v, ln, k)
            if not 0 <= number <= 1:
                raise self.fail("must be in [0, 1]", line=ln, key=k, value=v)
            return number

        rules = {"epochs": self.at_least(0, 10_000), "steps": self.at_least(1), "batch_size": self.at_least(1, 65_536),
                 "lr": self.positive, "optimizer": self.one_of(FINETUNE_OPTIMIZERS, "optimizer"),
                 "schedule": self.one_of(FINETUNE_SCHEDULES, "schedule"), "kd_alpha": weight,
                 "temperature": self.positive, "seed": self.at_least(0, MAX_SEED), "l1": self.non_negative,
                 "group_lasso": self.non_negative, "early_stop": self.one_of(EARLY_STOP_RULES, "rule"),
                 "min_epochs": self.at_least(1, 10_000),
                 "eta": self.at_least(2, 100), "startup": self.at_least(1)}
        return FineTuneSpec(**self.fields(m, key, rules))

    def artifact(self, value: Any, line: int, key: str) -> ArtifactSpec:
        m = self.mapping(value, line, key, ARTIFACT_KEYS)
        return ArtifactSpec(**self.fields(m, key, {"entropy": self.boolean}))

    def latency(self, value: Any, line: int, key: str) -> LatencySpec:
        m = self.mapping(value, line, key, LATENCY_KEYS)
        rules = {"batch_size": self.at_least(1, 4096), "threads": self.at_least(1, 1024), "warmup": self.at_least(0),
                 "repeats": self.at_least(1), "runtime": self.one_of(RUNTIMES, "runtime"), "table": self.boolean}
        return LatencySpec(**self.fields(m, key, rules))

    def execution(self, value: Any, line: int, key: str) -> ExecutionSpec:
        m = self.mapping(value, line, key, EXECUTION_KEYS)

        rules = {"executor": self.one_of(EXECUTORS, "executor"), "workers": self.at_least(1, 100_000),
                 "threads": self.at_least(1, 1024), "address": self.string, "num_cpus": self.positive,
                 "num_gpus": self.non_negative,
                 "timeout": self.positive, "retries": self.at_least(0, 100)}
        return ExecutionSpec(**self.fields(m, key, rules))

    def metric(self, value: Any, line: int, key: str) -> str:
        if not isinstance(value, str) or value not in METRICS:
            raise self.fail(f"unknown metric{_hint(value, METRICS)}; known: {', '.join(METRICS)}",
                            line=line, key=key, value=value)
        return value

    def objectives(self, value: Any, line: int, key: str) -> tuple[ObjectiveSpec, ...]:
        items = self.sequence(value, line, key)
        out: list[ObjectiveSpec] = []
        for i, (item, item_line) in enumerate(items.lined()):
            path = f"{key}.{i}"
            if isinstance(item, _Map):
                m = self.mapping(item, item_line, path, ("metric", "direction"))
                self.require(m, path, "metric")
                metric_line = m.value_lines["metric"]
                metric = self.metric(m["metric"], metric_line, f"{path}.metric")
                direction = m.get("direction", METRICS[metric])
                if direction not in DIRECTIONS:
                    raise self.fail(f"direction must be one of {', '.join(DIRECTIONS)}",
                                    line=m.value_lines["direction"], key=f"{path}.direction", value=direction)
            else:
                metric_line = item_line
                metric = self.metric(item, item_line, path)
                direction = METRICS[metric]
            if any(o.metric == metric for o in out):
                raise self.fail("duplicate objective", line=metric_line, key=path, value=metric)
            out.append(ObjectiveSpec(metric=metric, direction=direction))
        return tuple(out)

    def optimizer(self, value: Any, line: int, key: str) -> OptimizerSpec:
        """`name:` the default optimizer; every other key is an optimizer name with its settings."""
        if not isinstance(value, _Map):
            raise self.fail(f"expected a mapping, got {_type_name(value)}", line=line, key=key, value=value)
        name = self.string(value["name"], value.value_lines["name"], f"{key}.name") if "name" in value else None
        settings: dict[str, dict[str, Any]] = {}
        lines: dict[str, int] = {"name": value.value_lines.get("name", line)}
        for opt, block in value.items():
            if opt == "name":
                continue
            path, block_line = f"{key}.{opt}", value.value_lines[opt]
            if not isinstance(block, _Map):
                raise self.fail(f"expected the settings of optimizer '{opt}' as a mapping, got "
                                f"{_type_name(block)}", line=block_line, key=path, value=block)
            settings[opt] = {k: _plain(v) for k, v in block.items()}
            lines[opt] = block_line
            lines.update({f"{opt}.{k}": block.value_lines[k] for k in block})
        return OptimizerSpec(name=name, settings=settings, lines=lines)

    def constraints(self, value: Any, line: int, key: str) -> tuple[ConstraintSpec, ...]:
        m = self.mapping(value, line, key, METRICS, what="metric")
        out: list[ConstraintSpec] = []
        for metric, bounds in m.items():
            path, bounds_line = f"{key}.{metric}", m.value_lines[metric]
            b = self.mapping(bounds, bounds_line, path, ("min", "max"))
            if not b:
                raise self.fail("needs min and/or max", line=bounds_line, key=path, value=bounds)
            kw = self.fields(b, path, {"min": self.bound, "max": self.bound})
            if ("min" in kw and "max" in kw and type(kw["min"]) is type(kw["max"])
                    and parse_bound(kw["min"]) > parse_bound(kw["max"])):
                raise self.fail("min is greater than max", line=bounds_line, key=path, value=bounds)
            out.append(ConstraintSpec(metric=metric, **kw))
        return tuple(out)

    # -- the space ---------------------------------------------------------------------------------------

    def space(self, value: Any, line: int, key: str) -> SearchSpace:
        items = self.sequence(value, line, key)
        groups: list[Group] = []
        for i, (item, item_line) in enumerate(items.lined()):
            group = self.group(item, item_line, f"{key}.{i}")
            if any(g.name == group.name for g in groups):
                raise self.fail("duplicate group name", line=item.value_lines["name"], key=f"{key}.{i}.name",
                                value=group.name)
            groups.append(group)
        return SearchSpace(groups=tuple(groups))

    def group(self, value: Any, line: int, index_key: str) -> Group:
        m = self.mapping(value, line, index_key, GROUP_KEYS)
        self.require(m, index_key, "name", "layers", "primitives")
        name = m["name"]
        if not isinstance(name, str) or not GROUP_NAME.fullmatch(name):
            raise self.fail("group name must match [A-Za-z_][A-Za-z0-9_]*", line=m.value_lines["name"],
                            key=f"{index_key}.name", value=name)
        key = f"groups.{name}"  # from here on, paths name the group
        shared = self.optional(m, "shared", key, self.boolean, False)
        return Group(
            name=name,
            selectors=self.selectors(m["layers"], m.value_lines["layers"], f"{key}.layers"),
            knobs=self.primitives(m["primitives"], m.value_lines["primitives"], f"{key}.primitives"),
            shared=shared,
            where=Where(file=self.file, line=m.line),
        )

    def selectors(self, value: Any, line: int, key: str) -> tuple[Selector, ...]:
        if isinstance(value, str):  # a single selector may be written without a list
            lined = [(value, line)]
        else:
            lined = self.sequence(value, line, key).lined()
        out = []
        for text, text_line in lined:
            self.string(text, text_line, key)
            if text.startswith("re:"):
                try:
                    re.compile(text[3:])
                except re.error as exc:
                    raise self.fail(f"invalid regular expression: {exc}", line=text_line, key=key,
                                    value=text) from None
            out.append(Selector(text=text, where=Where(file=self.file, line=text_line)))
        return tuple(out)

    def primitives(self, value: Any, line: int, key: str) -> tuple[KnobSpec, ...]:
        m = self.mapping(value, line, key, CONFIGS, what="primitive")
        if not m:
            raise self.fail("must list at least one primitive", line=line, key=key, value=value)
        knobs: list[KnobSpec] = []
        for primitive, spec in m.items():
            path, spec_line = f"{key}.{primitive}", m.value_lines[primitive]
            allowed = CONFIGS[primitive].KNOBS
            spec = self.mapping(spec, spec_line, path, allowed, what=f"{primitive} knob")
            if not spec:
                raise self.fail(f"must set at least one knob (knobs: {', '.join(allowed)})", line=spec_line,
                                key=path, value=spec)
            for knob, param in spec.items():
                domain = self.domain(param, spec.value_lines[knob], f"{path}.{knob}", allowed[knob])
                knobs.append(KnobSpec(primitive=primitive, knob=knob, domain=domain,
                                      where=Where(file=self.file, line=spec.key_lines[knob])))
        return tuple(knobs)

    # -- one knob's domain -------------------------------------------------------------------------------

    def domain(self, value: Any, line: int, key: str, allowed: KnobRange) -> Domain:
        """A knob's param spec: a fixed value, or exactly one of choice / int / float."""
        if _is_number(value) or isinstance(value, str):
            return Choice(values=(self.knob_value(value, line, key, allowed),))
        if not isinstance(value, _Map):
            raise self.fail("expected a number or a mapping with one of: choice, int, float", line=line,
                            key=key, value=value)
        kinds = [k for k in PARAM_KINDS if k in value]
        if len(kinds) != 1:
            raise self.fail("needs exactly one of: choice, int, float", line=line, key=key, value=value)
        kind = kinds[0]
        self.mapping(value, line, key, (kind,) if kind == "choice" else (kind, "step", "log"))
        if kind == "choice":
            return self.choice(value, key, allowed)
        if allowed.kind is str:
            raise self.fail(f"this knob takes names ({allowed.describe()}): use choice", line=line, key=key,
                            value=value)
        if kind == "float" and allowed.kind is int:
            raise self.fail(f"this knob takes integers ({allowed.describe()}): use int or choice",
                            line=line, key=key, value=value)
        low, high, lines = self.bounds(value, kind, key)
        log = self.optional(value, "log", key, self.boolean, False)
        domain: Domain
        if kind == "int":
            step = self.optional(value, "step", key, self.at_least(1), 1)
            if log and (low < 1 or step != 1):
                raise self.fail("a log int range needs low >= 1 and no step", line=line, key=key, value=value)
            if high > low and step > high - low:  # Optuna would quietly shrink the range to its low end
                raise self.fail(f"step {step} is wider than the range [{low}, {high}]", line=line, key=key,
                                value=value)
            domain = IntRange(low=low, high=high, step=step, log=log)
        else:
            step = self.optional(value, "step", key, self.positive, None)
            if log and step is not None:
                raise self.fail("a float range takes step or log, not both", line=line, key=key, value=value)
            if log and low <= 0:
                raise self.fail("a log float range needs low > 0", line=line, key=key, value=value)
            if step is not None and high > low and step > high - low:
                raise self.fail(f"step {step} is wider than the range [{low}, {high}]", line=line, key=key,
                                value=value)
            domain = FloatRange(low=low, high=high, step=step, log=log)
        self.check_range(low, high, lines, key, allowed)
        return domain

    def knob_value(self, value: Any, line: int, key: str, allowed: KnobRange) -> Any:
        """One value a knob may take: a name or a finite number the primitive allows."""
        if allowed.kind is str:
            if not allowed.allows(value):
                raise self.fail(f"value not allowed: {allowed.describe()}", line=line, key=key, value=value)
            return value
        self.number(value, line, key)
        if allowed.kind is int and not isinstance(value, int):
            raise self.fail(f"this knob takes integers ({allowed.describe()})", line=line, key=key,
                            value=value)
        if not allowed.allows(value):
            raise self.fail(f"value not allowed: {allowed.describe()}", line=line, key=key, value=value)
        return value

    def choice(self, m: _Map, key: str, allowed: KnobRange) -> Choice:
        items = self.sequence(m["choice"], m.value_lines["choice"], f"{key}.choice")
        for i, (item, item_line) in enumerate(items.lined()):
            self.knob_value(item, item_line, key, allowed)
            if item in items[:i]:
                raise self.fail("duplicate choice", line=item_line, key=key, value=item)
        return Choice(values=tuple(items))

    def bounds(self, m: _Map, kind: str, key: str) -> tuple[Any, Any, list[int]]:
        """The [low, high] pair of an int or float range (ints stay ints, floats become floats)."""
        pair, line, path = m[kind], m.value_lines[kind], f"{key}.{kind}"
        if not isinstance(pair, _Seq) or len(pair) != 2:
            raise self.fail("expected [low, high]", line=line, key=path, value=pair)
        if kind == "int":
            low, high = (self.integer(v, ln, path) for v, ln in pair.lined())
        else:
            low, high = (self.number(v, ln, path) for v, ln in pair.lined())
        if low > high:
            raise self.fail("low is greater than high", line=line, key=path, value=pair)
        return low, high, pair.item_lines

    def check_range(self, low: Any, high: Any, lines: list[int], key: str, allowed: KnobRange) -> None:
        """Every value of [low, high] must be allowed: both ends must lie in the knob's continuous range."""
        if low == high:
            self.knob_value(low, lines[0], key, allowed)
            return
        # extra values (e.g. 32 bits) are isolated points: a range may not span the gap up to them
        inside = replace(allowed, extra=())
        for end, end_line in ((low, lines[0]), (high, lines[1])):
            if not inside.allows(end):
                hint = "; list isolated values with choice" if allowed.extra else ""
                raise self.fail(f"range end not allowed: {allowed.describe()}{hint}", line=end_line, key=key,
                                value=end)
