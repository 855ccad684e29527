"""Search-space YAML loader: valid files, the dump/parse round trip, and errors that point at the problem."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from autocomp.config import DataSpec, ModelSpec, RunSpec, dump_run_spec, load_run_spec, parse_run_spec
from autocomp.errors import SpaceError
from autocomp.execution import ExecutionSpec
from autocomp.finetune import FineTuneSpec
from autocomp.objective import Constraint, Objective
from autocomp.space import Where
from autocomp.space.params import Choice, FloatRange, IntRange
from autocomp.zoo.train import TrainSpec

FULL = """\
version: 1
model:
  name: lenet300
  kwargs: {hidden: 64}
  weights: weights/state.pt
data:
  name: mnist
  dir: data
  val_fraction: 0.2
train:
  epochs: 2
  lr: 1e-3
latency: {threads: 2}
objectives:
  - accuracy
  - {metric: latency_ms, direction: minimize}
constraints:
  accuracy_drop: {max: 0.02}
groups:
  - name: fc
    layers: ["re:fc\\\\d", "type:Linear", "fc3"]
    shared: true
    primitives:
      prune: {ratio: {float: [0.0, 0.95], step: 0.05}}
      lowrank: {rank_ratio: {choice: [0.125, 0.25, 0.5, 1.0]}}
      quantize: {bits: {int: [2, 8]}}
  - name: head
    layers: out
    primitives:
      quantize:
        bits: 32
execution: {executor: ray, workers: 2, timeout: 60}
finetune: {epochs: 2, steps: 50, kd_alpha: 0.5, optimizer: sgd, early_stop: halving, eta: 2}
"""

# lines:  1 version, 2 model, 3 name, 4 data, 5 name, 6 groups, 7 group name, 8 layers, 9 primitives,
#        10 prune, 11 quantize
BASE = """\
version: 1
model:
  name: lenet300
data:
  name: mnist
groups:
  - name: fc
    layers: [fc1, fc2]
    primitives:
      prune: {ratio: {float: [0.0, 0.9]}}
      quantize: {bits: {int: [2, 8]}}
"""
SECOND_GROUP = "  - name: fc\n    layers: [fc3]\n    primitives: {prune: {ratio: 0.5}}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def strip_where(obj: Any) -> Any:
    """The same dataclass tree with every `where` and `source` reset, for comparisons."""
    if isinstance(obj, tuple):
        return tuple(strip_where(x) for x in obj)
    if not dataclasses.is_dataclass(obj):
        return obj
    changes = {f.name: strip_where(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    changes.update({k: v for k, v in (("where", Where()), ("source", None)) if k in changes})
    return dataclasses.replace(obj, **changes)


def test_full_file_parses(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    spec = load_run_spec(path, models=["lenet300"], datasets=["mnist"])

    assert spec.source == str(path)
    weights = str(tmp_path / "weights" / "state.pt")
    assert spec.model == ModelSpec(name="lenet300", kwargs={"hidden": 64}, weights=weights)
    assert spec.data == DataSpec(name="mnist", dir=str(tmp_path / "data"), val_fraction=0.2)
    assert spec.train == TrainSpec(epochs=2, lr=1e-3)
    assert spec.latency.threads == 2 and spec.latency.repeats == 50
    assert spec.objectives == (Objective(name="accuracy", direction="maximize"),
                               Objective(name="latency_ms", direction="minimize"))
    assert spec.constraints == (Constraint(metric="accuracy_drop", max=0.02),)
    assert spec.execution == ExecutionSpec(executor="ray", workers=2, timeout=60.0)
    assert spec.finetune == FineTuneSpec(epochs=2, steps=50, kd_alpha=0.5, optimizer="sgd", early_stop="halving",
                                         eta=2)

    fc, head = spec.space.groups
    assert fc.name == "fc" and fc.shared and not head.shared
    assert [s.text for s in fc.selectors] == ["re:fc\\d", "type:Linear", "fc3"]
    assert fc.selectors[0].where == Where(file=str(path), line=21)
    assert fc.where.line == 20
    assert {(k.primitive, k.knob): k.domain for k in fc.knobs} == {
        ("prune", "ratio"): FloatRange(low=0.0, high=0.95, step=0.05),
        ("lowrank", "rank_ratio"): Choice(values=(0.125, 0.25, 0.5, 1.0)),
        ("quantize", "bits"): IntRange(low=2, high=8),
    }
    assert fc.knobs[0].where.line == 24
    assert [s.text for s in head.selectors] == ["out"]
    assert [(k.primitive, k.knob, k.domain) for k in head.knobs] == [
        ("quantize", "bits", Choice(values=(32,)))]


def test_defaults_and_factory_model() -> None:
    spec = parse_run_spec(BASE.replace("lenet300", "my.module:build"), models=["lenet300"])
    assert spec.objectives == RunSpec.__dataclass_fields__["objectives"].default
    assert spec.constraints == () and spec.train == TrainSpec() and spec.source == "<string>"
    assert spec.model.weights is None and spec.data.dir is None


def test_dump_parse_round_trip(tmp_path: Path) -> None:
    spec = load_run_spec(write(tmp_path, FULL))
    text = dump_run_spec(spec)
    again = parse_run_spec(text)
    assert strip_where(again) == strip_where(spec)
    assert dump_run_spec(again) == text


@pytest.mark.parametrize("data", [
    "{name: text, dir: corpus, block_size: 64, tokenizer: gpt2, test_fraction: 0.05}",
    "{name: imagefolder, dir: pets, image_size: [32, 48], channels: 3}",
    '{name: "my_data.sets:build", kwargs: {n: 10, names: [a, b]}, val_fraction: 0.2}',
])
def test_data_options_and_task_round_trip(tmp_path: Path, data: str) -> None:
    text = BASE.replace("data:\n  name: mnist\n", f"data: {data}\ntask: language-model\n")
    spec = load_run_spec(write(tmp_path, text))
    assert spec.task == "language-model" and spec.data.options
    if "dir" in data:  # relative to the file, like data.dir; a tokenizer name that is no file stays a name
        assert spec.data.dir is not None and spec.data.dir.startswith(str(tmp_path))
    assert spec.data.options.get("tokenizer", "gpt2") == "gpt2"
    dumped = dump_run_spec(spec)
    again = parse_run_spec(dumped)
    assert strip_where(again) == strip_where(spec)
    assert dump_run_spec(again) == dumped
    assert "task:" not in dump_run_spec(dataclasses.replace(spec, task="classification"))  # the default


def test_task_names(tmp_path, monkeypatch) -> None:
    assert parse_run_spec(BASE + "task: regression\n").task == "regression"
    (tmp_path / "segtasks.py").write_text("from autocomp.tasks import Regression\n"
                                         "class Seg(Regression):\n    METRICS = {'iou': 'maximize'}\n"
                                         "    PRIMARY = 'iou'\n")
    monkeypatch.chdir(tmp_path)
    spec = parse_run_spec(BASE + "task: segtasks:Seg\n")  # the user's task: its metrics become objectives
    assert spec.task == "segtasks:Seg" and [o.name for o in spec.objectives] == ["iou", "size_bytes"]
    assert spec.objectives[0].direction == "maximize"
    with pytest.raises(SpaceError, match="cannot be imported: ModuleNotFoundError") as info:
        parse_run_spec(BASE + "task: my.tasks:Seg\n")
    assert (info.value.line, info.value.key) == (12, "task")
    lm = parse_run_spec(BASE + "task: language-model\nconstraints: {perplexity: {max: 1.02x}}\n")
    assert [(o.name, o.direction) for o in lm.objectives] == [("perplexity", "minimize"), ("size_bytes", "minimize")]
    assert lm.constraints[0].max == "1.02x"
    assert parse_run_spec(BASE).task == "classification"
    with pytest.raises(SpaceError, match="unknown task .did you mean 'regression'.*or a 'pkg.module:attr'") as info:
        parse_run_spec(BASE + "task: regresion\n")
    assert (info.value.line, info.value.key, info.value.value) == (12, "task", "regresion")
    with pytest.raises(SpaceError, match="written 'pkg.module:attr'"):
        parse_run_spec(BASE + "task: 'my tasks:x'\n")


def test_log_ranges_round_trip() -> None:
    text = BASE.replace("{float: [0.0, 0.9]}", "{float: [0.01, 0.9], log: true}").replace(
        "{int: [2, 8]}", "{int: [2, 8], step: 2}")
    spec = parse_run_spec(text)
    assert [k.domain for k in spec.space.groups[0].knobs] == [
        FloatRange(low=0.01, high=0.9, log=True), IntRange(low=2, high=8, step=2)]
    assert strip_where(parse_run_spec(dump_run_spec(spec))) == strip_where(spec)


P = "groups.fc.primitives"
# (name, edit of BASE: (old, new) or a whole text, expected line, key, value)
BAD: list[tuple[str, Any, int | None, str | None, Any]] = [
    ("top-level typo", (BASE, BASE + "objectivs: [accuracy]\n"), 12, "objectivs", None),
    ("primitive typo", ("prune: {", "prunee: {"), 10, f"{P}.prunee", None),
    ("unknown knob", ("ratio:", "amount:"), 10, f"{P}.prune.amount", None),
    ("bits below range", ("[2, 8]", "[0, 8]"), 11, f"{P}.quantize.bits", 0),
    ("ratio high is open", ("[0.0, 0.9]", "[0, 1.0]"), 10, f"{P}.prune.ratio", 1.0),
    ("int range spans to extra", ("[2, 8]", "[2, 32]"), 11, f"{P}.quantize.bits", 32),
    ("float range for int knob", ("{int: [2, 8]}", "{float: [2, 8]}"), 11, f"{P}.quantize.bits",
     {"float": [2, 8]}),
    ("version 2", ("version: 1", "version: 2"), 1, "version", 2),
    ("missing groups", (BASE, BASE.split("groups:")[0]), 1, "groups", None),
    ("empty groups", (BASE, BASE.split("groups:")[0] + "groups: []\n"), 6, "groups", []),
    ("empty layers", ("[fc1, fc2]", "[]"), 8, "groups.fc.layers", []),
    ("duplicate key", ("  name: mnist\n", "  name: mnist\n  name: other\n"), 6, "name", None),
    ("anchor", ("  name: mnist\n", "  name: &n mnist\n"), 5, None, "&n"),
    ("syntax error", ("[fc1, fc2]", "[fc1, fc2"), 9, None, None),
    ("unknown metric", (BASE, BASE + "objectives: [accuracy, size]\n"), 12, "objectives.1", "size"),
    ("constraint min > max", (BASE, BASE + "constraints:\n  accuracy: {min: 0.9, max: 0.5}\n"), 13,
     "constraints.accuracy", {"min": 0.9, "max": 0.5}),
    ("bad group name", ("- name: fc", "- name: 1fc"), 7, "groups.0.name", "1fc"),
    ("duplicate group", (BASE, BASE + SECOND_GROUP), 12, "groups.1.name", "fc"),
    ("bool for number", ("[2, 8]", "[2, true]"), 11, f"{P}.quantize.bits.int", True),
    ("bool fixed value", ("{int: [2, 8]}", "false"), 11, f"{P}.quantize.bits", False),
    ("two kinds", ("{int: [2, 8]}", "{int: [2, 8], choice: [4]}"), 11, f"{P}.quantize.bits",
     {"int": [2, 8], "choice": [4]}),
    ("step and log", ("[0.0, 0.9]}", "[0.1, 0.9], step: 0.1, log: true}"), 10, f"{P}.prune.ratio",
     {"float": [0.1, 0.9], "step": 0.1, "log": True}),
    ("step wider than range", ("[0.0, 0.9]}", "[0.0, 0.9], step: 1.0e+12}"), 10, f"{P}.prune.ratio",
     {"float": [0.0, 0.9], "step": 1e12}),
    ("int step wider than range", ("{int: [2, 8]}", "{int: [2, 8], step: 7}"), 11, f"{P}.quantize.bits",
     {"int": [2, 8], "step": 7}),
    ("duplicate choice", ("{int: [2, 8]}", "{choice: [4, 8, 4]}"), 11, f"{P}.quantize.bits", 4),
    ("three-element range", ("[2, 8]", "[2, 4, 8]"), 11, f"{P}.quantize.bits.int", [2, 4, 8]),
    ("nan", ("[0.0, 0.9]", "[.nan, 0.9]"), 10, f"{P}.prune.ratio.float", float("nan")),
    ("unknown executor", (BASE, BASE + "execution: {executor: dask}\n"), 12, "execution.executor", "dask"),
    ("zero workers", (BASE, BASE + "execution: {workers: 0}\n"), 12, "execution.workers", 0),
    ("finetune optimizer", (BASE, BASE + "finetune: {optimizer: lbfgs}\n"), 12, "finetune.optimizer", "lbfgs"),
    ("kd alpha above 1", (BASE, BASE + "finetune: {kd_alpha: 1.5}\n"), 12, "finetune.kd_alpha", 1.5),
    ("negative l1", (BASE, BASE + "finetune: {l1: -0.1}\n"), 12, "finetune.l1", -0.1),
    ("early stop rule", (BASE, BASE + "finetune: {early_stop: hyperband}\n"), 12, "finetune.early_stop",
     "hyperband"),
    ("negative gpus", (BASE, BASE + "execution: {num_gpus: -1}\n"), 12, "execution.num_gpus", -1),
    ("not a mapping", (BASE, "- 1\n- 2\n"), 1, None, [1, 2]),
    ("empty file", (BASE, ""), None, None, None),
]


@pytest.mark.parametrize(("edit", "line", "key", "value"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inputs(tmp_path: Path, edit: tuple[str, str], line: int | None, key: str | None,
                    value: Any) -> None:
    old, new = edit
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(SpaceError) as info:
        load_run_spec(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), line, key), str(err)
    if value != value:  # NaN
        assert err.value != err.value
    else:
        assert err.value == value and type(err.value) is type(value), str(err)
    assert str(path) in str(err)


def test_messages_help() -> None:
    with pytest.raises(SpaceError, match="did you mean 'objectives'.*allowed: version, model"):
        parse_run_spec(BASE + "objectivs: [accuracy]\n")
    with pytest.raises(SpaceError, match="unknown primitive 'prunee' .did you mean 'prune'.*lowrank, prune"):
        parse_run_spec(BASE.replace("prune: {", "prunee: {"))
    with pytest.raises(SpaceError, match="unknown prune knob 'amount'; allowed: ratio"):
        parse_run_spec(BASE.replace("ratio:", "amount:"))
    with pytest.raises(SpaceError, match=r"int in \[1, 8\] or one of \[32\]"):
        parse_run_spec(BASE.replace("[2, 8]", "[0, 8]"))
    with pytest.raises(SpaceError, match=r"takes names \(one of \['auto', 'svd', 'tucker2', 'spatial'\]\)"):
        parse_run_spec(BASE.replace("prune: {", "lowrank: {method: {int: [1, 2]}}\n      prune: {"))
    with pytest.raises(SpaceError, match=r"value not allowed: one of \['l1'"):
        parse_run_spec(BASE.replace("prune: {", "channels: {criterion: l3}\n      prune: {"))
    with pytest.raises(SpaceError, match="lines 5 and 6"):
        parse_run_spec(BASE.replace("  name: mnist\n", "  name: mnist\n  name: other\n"))
    with pytest.raises(SpaceError, match="anchors and aliases are not supported"):
        parse_run_spec("a: &x [1]\nb: *x\n")
    with pytest.raises(SpaceError, match="known: accuracy, accuracy_drop"):
        parse_run_spec(BASE + "objectives: [acc]\n")


def test_known_names() -> None:
    with pytest.raises(SpaceError, match="unknown model.*did you mean 'lenet300'") as info:
        parse_run_spec(BASE.replace("lenet300", "lenet30"), models=["lenet300", "vgg"])
    assert (info.value.line, info.value.key, info.value.value) == (3, "model.name", "lenet30")
    with pytest.raises(SpaceError, match="unknown dataset") as info:
        parse_run_spec(BASE, datasets=["mnist5k"])
    assert (info.value.line, info.value.key) == (5, "data.name")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="cannot read"):
        load_run_spec(tmp_path / "nope.yaml")
