"""Read and write run files (YAML, schema version 1) as `RunSpec` objects.

Every problem in a file becomes a `SpaceError` naming the file, the 1-based line, the dotted key path
(groups by name, e.g. `groups.fc.primitives.prune.ratio`) and the offending value. The settings sections
(`train`, `finetune`, `latency`, `artifact`, `execution`) are read from their dataclasses' fields alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from autocomp.artifacts import ArtifactSpec
from autocomp.config.run import DEFAULT_TASK, DataSpec, ModelSpec, RunSpec
from autocomp.errors import AutocompError, SpaceError
from autocomp.execution import ExecutionSpec
from autocomp.finetune import FineTuneSpec
from autocomp.objective import DIRECTIONS, METRICS, RELATIVE, Constraint, Objective, parse_bound
from autocomp.optimizers import OptimizerSpec
from autocomp.refs import REFERENCE, is_reference
from autocomp.runtimes import LatencySpec
from autocomp.schema import (
    At,
    LinedMap,
    dump_settings,
    hint,
    integer,
    mapping,
    number,
    optional,
    plain,
    read_settings,
    read_yaml,
    require,
    sequence,
    string,
    type_name,
)
from autocomp.space import SearchSpace
from autocomp.space.schema import dump_groups, read_groups
from autocomp.tasks import TASKS, Task, get_task
from autocomp.zoo.sources import PATH_OPTIONS, source_options
from autocomp.zoo.train import TrainSpec

VERSION = 1
# sections read straight from a settings dataclass: key (= RunSpec field) -> class
SETTINGS_SECTIONS: dict[str, type] = {"train": TrainSpec, "finetune": FineTuneSpec, "latency": LatencySpec,
                                      "artifact": ArtifactSpec, "execution": ExecutionSpec}
TOP_KEYS = ("version", "model", "data", "task", "train", "finetune", "latency", "artifact", "optimizer", "execution",
            "objectives", "constraints", "trials", "groups")
MODEL_KEYS = tuple(f.name for f in fields(ModelSpec))
DATA_KEYS = tuple(f.name for f in fields(DataSpec) if f.name != "options")  # a source's options sit beside them


def load_run_spec(
    path: str | os.PathLike[str], *, models: Iterable[str] = (), datasets: Iterable[str] = ()
) -> RunSpec:
    """Read a run file.

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
    """Parse run-file YAML text.

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
    return _RunFile(file, models=tuple(models), datasets=tuple(datasets)).read(read_yaml(text, file))


def dump_run_spec(spec: RunSpec) -> str:
    """Write a RunSpec as version-1 YAML that `parse_run_spec` reads back to an equal spec.

    `where` and `source` are not written. Knobs of one primitive in a group are written together.
    """
    model: dict[str, Any] = {"name": spec.model.name}
    if spec.model.kwargs:
        model["kwargs"] = plain(spec.model.kwargs)
    if spec.model.weights is not None:
        model["weights"] = spec.model.weights
    data: dict[str, Any] = {k: getattr(spec.data, k) for k in DATA_KEYS}
    data.update(plain(spec.data.options))
    doc: dict[str, Any] = {"version": VERSION, "model": model, "data": data}
    if spec.task != DEFAULT_TASK:
        doc["task"] = spec.task
    doc |= {
        "train": dump_settings(spec.train),
        "latency": dump_settings(spec.latency),
        "artifact": dump_settings(spec.artifact),
        "objectives": [{"metric": o.name, "direction": o.direction} for o in spec.objectives],
    }
    if spec.constraints:
        doc["constraints"] = {
            c.metric: {k: v for k, v in (("min", c.min), ("max", c.max)) if v is not None}
            for c in spec.constraints
        }
    if spec.optimizer.name or spec.optimizer.settings:
        block: dict[str, Any] = {"name": spec.optimizer.name} if spec.optimizer.name else {}
        block.update({k: plain(v) for k, v in spec.optimizer.settings.items()})
        doc["optimizer"] = block
    for key in ("finetune", "execution"):  # written only when set, as older files were
        settings = getattr(spec, key)
        if settings != type(settings)():
            doc[key] = dump_settings(settings)
    if spec.trials is not None:
        doc["trials"] = spec.trials
    doc["groups"] = dump_groups(spec.space.groups)
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


class _RunFile:
    """Turns the parsed YAML (with line info) into a RunSpec, one small method per special section."""

    def __init__(self, file: str, *, models: tuple[str, ...], datasets: tuple[str, ...]) -> None:
        self.file = file
        self.models = models
        self.datasets = datasets
        self.metrics: dict[str, str] = dict(METRICS)  # and the task's, once `read` knows it
        # "<string>" and the like are not paths: keep relative paths as written
        self.base = None if file.startswith("<") else os.path.dirname(os.path.abspath(file))

    def read(self, doc: Any) -> RunSpec:
        at = At(self.file, None, "")
        if doc is None:
            raise at.fail("the file is empty")
        if not isinstance(doc, LinedMap):
            raise At(self.file, 1, "").fail(f"expected a mapping at the top level, got {type_name(doc)}", doc)
        at = At(self.file, doc.line, "")
        mapping(doc, at, TOP_KEYS)
        require(doc, at, "version", "model", "data", "groups")
        version = doc["version"]
        if type(version) is not int or version != VERSION:  # type(): `true` must not pass for 1
            raise at.value_of(doc, "version").fail(f"unsupported version (this autocomp reads version {VERSION})",
                                                   version)
        extra: dict[str, Any] = {}
        if "task" in doc:  # first: objectives and constraints may name the task's metrics
            extra["task"] = self.task(doc["task"], at.value_of(doc, "task"))
        task = get_task(extra.get("task", DEFAULT_TASK)) if "task" not in doc or extra["task"] in TASKS \
            else self.user_task(extra["task"], at.value_of(doc, "task"))
        self.metrics = {**METRICS, **task.METRICS}
        if "objectives" not in doc and task.PRIMARY != "accuracy":  # the task's own metric, then size
            extra["objectives"] = (Objective(name=task.PRIMARY, direction=task.METRICS[task.PRIMARY]),
                                   Objective(name="size_bytes", direction="minimize"))
        readers: dict[str, Callable[[Any, At], Any]] = {
            "optimizer": self.optimizer, "objectives": self.objectives, "constraints": self.constraints}
        extra.update({key: read(doc[key], at.value_of(doc, key)) for key, read in readers.items() if key in doc})
        extra.update({key: read_settings(cls, doc[key], at.value_of(doc, key))
                      for key, cls in SETTINGS_SECTIONS.items() if key in doc})
        if "trials" in doc:
            extra["trials"] = integer(1)(doc["trials"], at.value_of(doc, "trials"))
        return RunSpec(
            model=self.model(doc["model"], at.value_of(doc, "model")),
            data=self.data(doc["data"], at.value_of(doc, "data")),
            space=SearchSpace(groups=read_groups(doc["groups"], at.value_of(doc, "groups"))),
            source=self.file,
            **extra,
        )

    def path(self, value: Any, at: At) -> str:
        """A file path; a relative one is resolved against the run file's directory."""
        text = os.path.expanduser(string(value, at))
        if self.base is None or os.path.isabs(text):
            return text
        return os.path.normpath(os.path.join(self.base, text))

    def model(self, value: Any, at: At) -> ModelSpec:
        m = mapping(value, at, MODEL_KEYS)
        require(m, at, "name")
        name = string(m["name"], at.value_of(m, "name"))
        # "module:attr" names a factory outside the zoo
        if self.models and ":" not in name and name not in self.models:
            known = ", ".join(sorted(self.models))
            raise at.value_of(m, "name").fail(f"unknown model{hint(name, self.models)}; known: {known}", name)
        kwargs: dict[str, Any] = {}
        if "kwargs" in m:
            raw = m["kwargs"]
            if not isinstance(raw, LinedMap):
                raise at.value_of(m, "kwargs").fail("expected a mapping", raw)
            for k in raw:
                if not isinstance(k, str):
                    raise At(self.file, raw.key_lines[k], f"{at.key}.kwargs").fail(
                        "keyword argument names must be strings", k)
            kwargs = plain(raw)
        weights = self.path(m["weights"], at.value_of(m, "weights")) if "weights" in m else None
        return ModelSpec(name=name, kwargs=kwargs, weights=weights)

    def data(self, value: Any, at: At) -> DataSpec:
        """name/dir/val_fraction/batch_size, and beside them the options the named source declares."""
        if not isinstance(value, LinedMap):
            raise at.fail(f"expected a mapping, got {type_name(value)}", value)
        require(value, at, "name")
        name = string(value["name"], at.value_of(value, "name"))
        # "module:factory" names the user's function; other names must be known (when a list is given)
        if self.datasets and not is_reference(name) and name not in self.datasets:
            known = ", ".join(sorted(self.datasets))
            raise at.value_of(value, "name").fail(f"unknown dataset{hint(name, self.datasets)}; known: {known}, "
                                                  "or a 'pkg.module:factory' reference", name)
        if is_reference(name) and not REFERENCE.fullmatch(name):
            raise at.value_of(value, "name").fail("a data factory is written 'pkg.module:function'", name)
        option_rules = source_options(name)
        allowed = DATA_KEYS + tuple(option_rules)
        for k in value:  # each source declares its keys: name the source and the value written
            if k not in allowed:
                raise at.key_of(value, k).fail(f"unknown key '{k}'{hint(k, allowed)} for data source '{name}'; "
                                               f"allowed: {', '.join(allowed)}", value[k])
        m = mapping(value, at, allowed)

        def fraction(v: Any, where: At) -> float:
            result = number(v, where)
            if not 0 < result <= 0.5:
                raise where.fail("must be in (0, 0.5]", v)
            return result

        rules: dict[str, Callable[[Any, At], Any]] = {
            "name": string, "dir": lambda v, where: None if v is None else self.path(v, where),
            "val_fraction": fraction, "batch_size": integer(1), "val_batches": optional(integer(1))}
        kw = {k: rules[k](v, at.value_of(m, k)) for k, v in m.items() if k in rules}
        options = {k: self.option(k, option_rules[k], v, at.value_of(m, k)) for k, v in m.items() if k not in rules}
        return DataSpec(**kw, options=options)

    def option(self, key: str, rule: Callable[[Any, At], Any], value: Any, at: At) -> Any:
        """A data source's option, checked by its rule; a path option is resolved against the run file."""
        checked = rule(value, at)
        kind = PATH_OPTIONS.get(key)
        if kind is None or not isinstance(checked, str):
            return checked
        resolved = self.path(checked, at)
        return resolved if kind == "path" or os.path.exists(resolved) else checked

    def task(self, value: Any, at: At) -> str:
        """A built-in task name or a "pkg.module:attr" reference to the user's task."""
        name = string(value, at)
        if is_reference(name):
            if not REFERENCE.fullmatch(name):
                raise at.fail("a task reference is written 'pkg.module:attr'", name)
            return name
        known = tuple(TASKS)
        if name not in known:
            raise at.fail(f"unknown task{hint(name, known)}; known: {', '.join(known)}, or a 'pkg.module:attr' "
                          "reference", name)
        return name

    def user_task(self, ref: str, at: At) -> Task:
        """The user's task a reference names, imported now: its metrics are what objectives may name."""
        try:
            return get_task(ref)
        except AutocompError as err:
            raise at.fail(str(err), ref) from None

    def metric(self, value: Any, at: At) -> str:
        if not isinstance(value, str) or value not in self.metrics:
            raise at.fail(f"unknown metric{hint(value, self.metrics)}; known: {', '.join(self.metrics)}", value)
        return value

    def bound(self, value: Any, at: At) -> float | str:
        """A number, or a positive fraction of the uncompressed model's value: "0.5x"."""
        if isinstance(value, str):
            if RELATIVE.fullmatch(value.strip()) and parse_bound(value.strip()) > 0:
                return value.strip()
            raise at.fail('expected a number or a fraction of the baseline such as "0.5x"', value)
        return number(value, at)

    def objectives(self, value: Any, at: At) -> tuple[Objective, ...]:
        items = sequence(value, at)
        out: list[Objective] = []
        for i, item in enumerate(items):
            where = at.item(items, i)
            if isinstance(item, LinedMap):
                m = mapping(item, where, ("metric", "direction"))
                require(m, where, "metric")
                metric_at = where.value_of(m, "metric")
                metric = self.metric(m["metric"], metric_at)
                direction = m.get("direction", self.metrics[metric])
                if direction not in DIRECTIONS:
                    raise where.value_of(m, "direction").fail(f"direction must be one of {', '.join(DIRECTIONS)}",
                                                              direction)
            else:
                metric_at = where
                metric = self.metric(item, where)
                direction = self.metrics[metric]
            if any(o.name == metric for o in out):
                raise At(self.file, metric_at.line, where.key).fail("duplicate objective", metric)
            out.append(Objective(name=metric, direction=direction))
        return tuple(out)

    def optimizer(self, value: Any, at: At) -> OptimizerSpec:
        """`name:` the default optimizer; every other key is an optimizer name with its settings."""
        if not isinstance(value, LinedMap):
            raise at.fail(f"expected a mapping, got {type_name(value)}", value)
        name = string(value["name"], at.value_of(value, "name")) if "name" in value else None
        settings: dict[str, dict[str, Any]] = {}
        lines: dict[str, int] = {"name": value.value_lines.get("name", at.line or 0)}
        for opt, block in value.items():
            if opt == "name":
                continue
            where = at.value_of(value, opt)
            if not isinstance(block, LinedMap):
                raise where.fail(f"expected the settings of optimizer '{opt}' as a mapping, got {type_name(block)}",
                                 block)
            settings[opt] = {k: plain(v) for k, v in block.items()}
            lines[opt] = value.value_lines[opt]
            lines.update({f"{opt}.{k}": block.value_lines[k] for k in block})
        return OptimizerSpec(name=name, settings=settings, lines=lines)

    def constraints(self, value: Any, at: At) -> tuple[Constraint, ...]:
        m = mapping(value, at, self.metrics, what="metric")
        out: list[Constraint] = []
        for metric, bounds in m.items():
            where = at.value_of(m, metric)
            b = mapping(bounds, where, ("min", "max"))
            if not b:
                raise where.fail("needs min and/or max", bounds)
            kw = {k: self.bound(v, where.value_of(b, k)) for k, v in b.items()}
            if ("min" in kw and "max" in kw and type(kw["min"]) is type(kw["max"])
                    and parse_bound(kw["min"]) > parse_bound(kw["max"])):
                raise where.fail("min is greater than max", bounds)
            out.append(Constraint(metric=metric, **kw))
        return tuple(out)
