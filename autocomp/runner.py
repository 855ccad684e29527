"""search(): the loop that wires space, optimizer, executor, evaluator and run store together.

    ask -> checkpoint (optimizer state + pending asks) -> evaluate -> journal each trial -> tell -> checkpoint

A run killed anywhere resumes from the run directory: finished trials are kept, asked-but-unfinished
ones are evaluated with the same parameters, and the optimizer continues from its saved state, so a
resumed run asks exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from autocomp import batches as batch_data
from autocomp import early_stop
from autocomp.batches import Data, Pair
from autocomp.compress import compress
from autocomp.devices import device_name
from autocomp.errors import AutocompError, RunError
from autocomp.evaluate import CompressionEvaluator
from autocomp.execution import DEFAULT_EXECUTION, ExecutionSpec, Executor, Outcome, Task, describe, make_executor
from autocomp.finetune import DEFAULT_FINETUNE, FineTuneSpec
from autocomp.latency_table import Conditions, LatencyTable, cache_path, calibrated_table, calibration_policies
from autocomp.metrics import count_flops, cpu_name, latency_batch, layer_profiles
from autocomp.objective import Constraint, Objective, as_objectives, evaluate_objectives
from autocomp.optimizers import (
    LayerProfile,
    Optimizer,
    OptimizerRef,
    SearchContext,
    Told,
    make_optimizer,
    optimizer_class,
    optimizer_name,
)
from autocomp.pareto import pareto_front
from autocomp.policy import Policy
from autocomp.proxies import proxy_table
from autocomp.report import latency_prediction_line, pareto_table, plot_pareto
from autocomp.runtimes import DEFAULT_LATENCY, LatencySpec
from autocomp.space import BoundSpace, SearchSpace
from autocomp.store import RunStore
from autocomp.tasks import Classification, TaskRef, get_task, task_reference
from autocomp.tasks import Task as ModelTask
from autocomp.version import __version__

REUSED = ("complete", "infeasible")  # outcomes an identical ask gets from the journal (a failure is retried)
JOURNAL_COPY = "journal:"  # worker prefix of a trial answered from the journal: not an evaluation, not counted
PATIENCE = 200  # asks in a row not evaluated (repeats, skips: each costs well under a second) before the
# optimizer is taken to have converged or to be stuck outside the constraints


@dataclass(frozen=True)
class Trial:
    """One finished trial, as journaled in trials.jsonl."""

    id: int
    params: dict[str, Any]
    policy: dict[str, Any]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    values: tuple[float, ...] | None = None
    violation: float = 0.0
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""

    @staticmethod
    def from_record(record: Mapping[str, Any]) -> Trial:
        """The trial a journal line (a `to_record` dict) holds; fields missing from older lines take defaults."""
        values = record.get("values")
        return Trial(
            id=record["id"], params=record["params"], policy=record["policy"], status=record["status"],
            metrics=record.get("metrics") or {}, values=tuple(values) if values is not None else None,
            violation=record.get("violation", 0.0), error=record.get("error"),
            seconds=record.get("seconds", 0.0), worker=record.get("worker", ""),
        )

    def to_record(self) -> dict[str, Any]:
        """The trial as a JSON-ready dict: one line of trials.jsonl."""
        return {
            "id": self.id, "params": self.params, "policy": self.policy, "metrics": self.metrics,
            "values": list(self.values) if self.values is not None else None, "violation": self.violation,
            "status": self.status, "error": self.error, "seconds": round(self.seconds, 4), "worker": self.worker,
        }

    @property
    def feasible(self) -> bool:
        """Completed and within every constraint (no violation)."""
        return self.status == "complete" and self.violation <= 0.0

    @property
    def copied(self) -> bool:
        """Answered from the journal: an ask equal to an earlier trial, not evaluated again."""
        return self.worker.startswith(JOURNAL_COPY)

    @property
    def evaluated(self) -> bool:
        """Fine-tuned and scored (or failed trying): what a search's `trials` budget counts.

        A repeat answered from the journal and a candidate skipped before fine-tuning (infeasible) cost next to
        nothing, so they are journaled and told but not counted.
        """
        return not self.copied and self.status != "infeasible"


@dataclass
class SearchResult:
    """What a search returns: every trial, the Pareto-optimal ones, and the uncompressed reference."""

    run_dir: Path
    trials: list[Trial]
    pareto: list[Trial]
    baseline: dict[str, float]
    objectives: tuple[Objective, ...]
    # front trial id -> the task's metrics on the test data (`test_accuracy`, `test_perplexity`, ...)
    test_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    latency_measured: dict[int, float] = field(default_factory=dict)  # front points, when latency was predicted
    latency_prediction: dict[str, float] | None = None  # predicted-vs-measured error over the front
    task: str = "classification"
    metric: str = "accuracy"  # the task's primary metric, the table's and the plot's

    @property
    def test_accuracy(self) -> dict[int, float]:
        """Front trial id -> test accuracy, for a task that reports accuracy (see `test_metrics`)."""
        return {i: m["test_accuracy"] for i, m in self.test_metrics.items() if "test_accuracy" in m}

    def table(self) -> str:
        """The Pareto front as a text table against the baseline, with the latency prediction error if any."""
        rows = [{"id": t.id, **t.metrics, **self.test_metrics.get(t.id, {}), "policy": t.policy,
                 **({"latency_measured_ms": self.latency_measured[t.id]} if t.id in self.latency_measured else {})}
                for t in self.pareto]
        text = pareto_table(rows, baseline=self.baseline, metric=self.metric)
        if self.latency_prediction:
            text += "\n" + latency_prediction_line(self.latency_prediction)
        return text


def front_of(trials: Sequence[Trial], objectives: Sequence[Objective]) -> list[Trial]:
    """Feasible, complete trials that no other feasible trial dominates, sorted by the first objective.

    A trial answered from the journal is its original's point, and only the original is on it.
    """
    feasible = [t for t in trials if t.feasible and t.values is not None and not t.copied]  # a copy: same point
    values = [t.values for t in feasible if t.values is not None]
    sign = -1 if objectives[0].direction == "maximize" else 1
    front = [(feasible[i], values[i]) for i in pareto_front(values, [o.direction for o in objectives])]
    return [t for t, v in sorted(front, key=lambda tv: tv[1][0] * sign)]


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
        "torch": torch.__version__, "autocomp": __version__, "torch_threads": torch.get_num_threads(),
    }


class _Progress:
    """A progress bar with trials done, failures and the best value of each objective so far."""

    COUNTED = ("failed", "pruned", "infeasible")  # failed always shown, the others once they occur

    def __init__(self, total: int, trials: Sequence[Trial], objectives: Sequence[Objective], enabled: bool):
        self.objectives = objectives
        self.counts = {status: sum(t.status == status and not t.copied for t in trials) for status in self.COUNTED}
        self.best: list[float | None] = [None] * len(objectives)
        for t in trials:
            self._update_best(t)
        self.bar = tqdm(total=total, initial=sum(t.evaluated for t in trials), desc="search", unit="trial",
                        disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr)
        self._postfix()

    def _update_best(self, trial: Trial) -> None:
        if not trial.feasible or trial.values is None:
            return
        for i, (o, v) in enumerate(zip(self.objectives, trial.values)):
            best = self.best[i]
            self.best[i] = v if best is None else (max if o.direction == "maximize" else min)(best, v)

    def _postfix(self) -> None:
        best = {o.name: f"{b:.4g}" for o, b in zip(self.objectives, self.best) if b is not None}
        counts = {k: n for k, n in self.counts.items() if n or k == "failed"}
        self.bar.set_postfix({**counts, **best}, refresh=False)

    def add(self, trial: Trial) -> None:
        if trial.status in self.counts and not trial.copied:
            self.counts[trial.status] += 1
        self._update_best(trial)
        self._postfix()
        self.bar.update(1 if trial.evaluated else 0)

    def close(self) -> None:
        self.bar.close()


def _finish(outcome: Outcome, params: dict[str, Any], policy: Policy, objectives, constraints) -> Trial:
    status, error, values, violation = outcome.status, outcome.error, None, 0.0
    if status == "infeasible":  # only the structural metrics were measured: the violation is theirs
        violation = sum(c.violation(outcome.metrics) for c in constraints if c.metric in outcome.metrics)
    if status == "complete":
        try:
            values, violation = evaluate_objectives(objectives, constraints, outcome.metrics)
        except Exception as err:  # a user objective that raises or gives NaN fails the trial only
            status, error = "failed", f"objective: {type(err).__name__}: {err}"
    return Trial(id=outcome.trial_id, params=params, policy=policy.to_dict(), status=status,
                 metrics=outcome.metrics, values=values, violation=violation, error=error,
                 seconds=outcome.seconds, worker=outcome.worker)


def _params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def run_loop(
    store: RunStore,
    space: BoundSpace,
    optimizer: Optimizer,
    executor: Executor,
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint],
    total: int,
    *,
    progress: bool = True,
    bars: Callable[[Sequence[Trial]], dict[int, float]] | None = None,
) -> list[Trial]:
    """Run (or continue) the search in `store` until it holds `total` evaluated (fine-tuned) trials.

    Workers are kept busy: whenever one frees, its trial is journaled and told, and the optimizer is asked
    for the next candidate (an optimizer that waits for a whole generation asks for none until then).
    An ask equal to a finished complete or infeasible trial is answered from the journal at once (a new
    trial with that one's metrics, worker `journal:ID`; the evaluation is deterministic). The constraints
    go with every evaluation: the evaluator checks those on structural metrics before fine-tuning (the
    trial is then `infeasible`, told to the optimizer with its violation and no values). Neither a repeat
    nor a skip counts towards `total` (`Trial.evaluated`); after PATIENCE of them in a row the search stops.
    `bars(trials so far)` gives each new evaluation its early-stopping bars (multi-fidelity).
    """
    trials = {t.id: t for t in map(Trial.from_record, store.trials())}  # in journal (= tell) order
    checkpoint = store.load_checkpoint()
    in_flight: dict[int, dict[str, Any]] = {}  # asked, not yet journaled: id -> {"id", "params"}
    next_id = 0
    if checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
        next_id = checkpoint["next_id"]
        pending = {item["id"]: item for item in checkpoint["pending"]}
        # journaled after the last checkpoint: told now, in journal order, as the killed run would have
        untold = [t for i, t in trials.items() if i in pending]
        optimizer.tell([Told(t.params, t.values if t.status == "complete" else None, t.violation) for t in untold])
        in_flight = {i: item for i, item in pending.items() if i not in trials}
    bar = _Progress(total, list(trials.values()), objectives, progress)
    policies: dict[int, Policy] = {}
    answers = {_params_key(t.params): t for t in trials.values() if t.status in REUSED and not t.copied}
    evaluated = sum(t.evaluated for t in trials.values())
    unevaluated_in_a_row = 0

    def record(trial: Trial) -> None:
        nonlocal evaluated, unevaluated_in_a_row
        in_flight.pop(trial.id)
        store.append(trial.to_record())  # journaled (and fsynced) before the optimizer hears of it
        trials[trial.id] = trial
        evaluated += trial.evaluated
        unevaluated_in_a_row = 0 if trial.evaluated else unevaluated_in_a_row + 1
        if not trial.copied and trial.status in REUSED:
            answers.setdefault(_params_key(trial.params), trial)
        bar.add(trial)
        optimizer.tell([Told(trial.params, trial.values if trial.status == "complete" else None, trial.violation)])

    def dispatch(item: dict[str, Any]) -> None:
        earlier = answers.get(_params_key(item["params"]))
        if earlier is not None:  # asked again (TPE does, in a discrete space): evaluation is deterministic
            record(replace(earlier, id=item["id"], seconds=0.0, worker=f"{JOURNAL_COPY}{earlier.id}"))
            return
        policies[item["id"]] = Policy.from_params(space, item["params"])
        now = bars(list(trials.values())) if bars else {}
        executor.submit(Task(item["id"], policies[item["id"]], bars=now, limits=tuple(constraints)))

    def save() -> None:
        store.save_checkpoint({"optimizer": optimizer.state_dict(), "pending": list(in_flight.values()),
                               "next_id": next_id})

    try:
        for item in list(in_flight.values()):
            dispatch(item)
        while evaluated < total or in_flight:
            free = min(executor.workers - len(in_flight), total - evaluated - len(in_flight))
            if unevaluated_in_a_row >= PATIENCE:
                if not in_flight:
                    tqdm.write(f"optimizer '{optimizer.name}' asked only repeats or candidates outside the "
                               f"constraints {PATIENCE} times in a row: stopping at {evaluated} evaluated trials")
                    break
                free = 0
            if free > 0:
                asked: list[dict[str, Any]] = [{"id": next_id + i, "params": p}
                                               for i, p in enumerate(optimizer.ask(free))]
                next_id += len(asked)
                in_flight.update((item["id"], item) for item in asked)
                save()  # the asks are on disk before they run, so a resumed run evaluates the same ones
                for item in asked:
                    dispatch(item)
                if not asked and not in_flight:
                    tqdm.write(f"optimizer '{optimizer.name}' has no more candidates ({len(trials)} trials)")
                    break
            if not in_flight:
                continue  # every ask was answered from the journal
            outcome = executor.next_outcome()
            item = in_flight[outcome.trial_id]
            record(_finish(outcome, item["params"], policies.pop(outcome.trial_id), objectives, constraints))
        save()
    finally:
        bar.close()
    return sorted(trials.values(), key=lambda t: t.id)


def write_front(
    store: RunStore,
    trials: Sequence[Trial],
    objectives: Sequence[Objective],
    baseline: dict[str, float],
    *,
    evaluator: CompressionEvaluator | None = None,
    test_metrics: Mapping[int, Mapping[str, float]] | None = None,
    title: str = "",
    task: str = "classification",
    metric: str = "accuracy",
) -> SearchResult:
    """Pareto front, pareto.json and pareto.png; where the search predicted latency, the front timed whole.

    `test_metrics` (trial id -> `test_`-prefixed metrics, -1 for the baseline; see `measure_test`) are
    recorded beside the front they were measured for, after the front was chosen; no choice here looks at
    them. `metric` is the task's primary metric: the plot's y axis and the table's column.
    """
    front = front_of(trials, objectives)
    tested = {i: dict(m) for i, m in (test_metrics or {}).items()}
    if -1 in tested:
        baseline = {**baseline, **tested.pop(-1)}
    unmeasured = {f"test_{metric}": None}  # said explicitly: not measured (the CLI leaves it to finalize)
    measured: dict[int, float] = {}  # latency of the front timed whole, where the search predicted it
    if evaluator is not None and evaluator.table is not None:
        for t in front:  # fine-tuning changes weights, not what runs: time the compressed structure
            structure = evaluator.structure(Policy.from_dict(t.policy))
            measured[t.id] = evaluator.measured_latency(structure)["latency_ms"]
    doc: dict[str, Any] = {
        "objectives": [{"name": o.name, "direction": o.direction} for o in objectives],
        "baseline": baseline,
        "task": task, "metric": metric,
        "trials": [{**t.to_record(), **unmeasured, **tested.get(t.id, {}),
                    **({"latency_measured_ms": measured[t.id]} if t.id in measured else {})} for t in front],
    }
    if measured:
        errors = sorted(abs(t.metrics["latency_ms"] - measured[t.id]) / measured[t.id] for t in front)
        doc["latency_prediction"] = {"points": len(errors), "median_abs_error": errors[len(errors) // 2],
                                     "max_abs_error": errors[-1]}
    store.write_json("pareto.json", doc)
    if {metric, "size_bytes"} <= set(baseline):
        plot_pareto(store.path / "pareto.png", [t.to_record() for t in trials],
                    [t.to_record() for t in front], baseline, y=metric, title=title)
    return SearchResult(store.path, list(trials), front, baseline, tuple(objectives), tested,
                        measured, doc.get("latency_prediction"), task=task, metric=metric)


def measure_test(executor: Executor, front: Sequence[Trial], split: str = "test",
                 baseline: bool = True) -> dict[int, dict[str, float]]:
    """The task's test metrics of the front's points and of the baseline (id -1), measured once, in parallel.

    Each is measured exactly as evaluated (the same compression and fine-tuning) on the executor's workers.
    `split="val-full"` measures them on all of the validation data instead (see `rescore_front`).
    """
    tasks = {**({-1: Policy.of({})} if baseline else {}), **{t.id: Policy.from_dict(t.policy) for t in front}}
    for trial_id, policy in tasks.items():
        executor.submit(Task(trial_id, policy, split=split))
    out: dict[int, dict[str, float]] = {}
    for _ in tasks:
        outcome = executor.next_outcome()
        if outcome.status == "complete":  # a point whose measurement failed shows no test metrics
            out[outcome.trial_id] = dict(outcome.metrics)
    return out


def rescore_front(executor: Executor, trials: Sequence[Trial], objectives: Sequence[Objective],
                  constraints: Sequence[Constraint],
                  baseline: dict[str, float]) -> tuple[list[Trial], dict[str, float]]:
    """Score the front of a capped search (`val_batches`) again on all of the validation data.

    Multi-fidelity on data: every candidate was scored on the first validation batches; the points that make
    the front (and the baseline) are measured again on the whole split, in parallel, and the front is chosen
    again from those numbers, until every point on it has been measured whole. Constraints relative to the
    baseline are resolved again on its full numbers. The capped value of each re-scored metric is kept as
    `<metric>@capped`; trials.jsonl keeps what the search saw. Returns the trials and the baseline.
    """
    def rescored(metrics: Mapping[str, float], again: Mapping[str, float]) -> dict[str, float]:
        return {**metrics, **{f"{k}@capped": metrics[k] for k in again if k in metrics}, **again}

    def resolve(reference: Mapping[str, float]) -> list[Constraint]:
        try:
            return [c.resolved(reference) for c in constraints]
        except ValueError as err:
            raise AutocompError(str(err)) from None

    out, done = list(trials), set[int]()
    baseline_full = False
    resolved = resolve(baseline)
    while True:
        todo = [t for t in front_of(out, objectives) if t.id not in done]
        if not todo:
            return out, baseline
        full = measure_test(executor, todo, split="val-full", baseline=not baseline_full)
        if -1 in full:
            baseline, baseline_full = rescored(baseline, full.pop(-1)), True
            resolved = resolve(baseline)
        this_round = {t.id for t in todo}
        done |= this_round
        for i, t in enumerate(out):
            if t.id in full:
                again = full[t.id]
                if "accuracy" in again and "accuracy" in baseline:  # the drop from the baseline's full number
                    again = {**again, "accuracy_drop": baseline["accuracy"] - again["accuracy"]}
                metrics = rescored(t.metrics, again)
                values, violation = evaluate_objectives(objectives, resolved, metrics)
                out[i] = replace(t, metrics=metrics, values=values, violation=violation)
            elif t.id in this_round:  # its full measurement failed: it cannot stay on the front
                out[i] = replace(t, status="failed", error="re-scoring on all validation data failed")


def _as_data(data: Any, what: str) -> Data:
    """(inputs, targets) tensors, or a re-iterable source of such batches (a DataLoader), streamed as it is.

    Only training data may shuffle: validation and test data are read in one order for every candidate.
    """
    return batch_data.checked(data, what, shuffled=what == "train_data")


def _check_task(task: ModelTask, model: nn.Module, data: Data) -> None:
    """The model's output on two rows must be what the task scores, or the search stops before it starts."""
    x, y = batch_data.head(data, 2)
    try:
        with torch.no_grad():
            output = model.eval()(x)
    except Exception as err:
        raise AutocompError(f"the model cannot run on inputs of shape {tuple(x.shape[1:])}: "
                            f"{type(err).__name__}: {err}") from err
    why = task.check(output, y)
    if why is not None:
        raise AutocompError(f"task {task.NAME}: {why}")


def check_taylor(task: ModelTask, space: SearchSpace) -> None:
    """Channel removal's Taylor scores are cross-entropy gradients: refused where the task is not scored so."""
    if isinstance(task, Classification):  # classification and language models: cross-entropy on logits
        return
    for group in space.groups:
        for knob in group.knobs:
            values = getattr(knob.domain, "values", ())
            if knob.primitive == "channels" and knob.knob == "criterion" and "taylor" in values:
                raise AutocompError(f"group '{group.name}': channels criterion 'taylor' scores channels by "
                                    f"cross-entropy gradients, which the {task.NAME} task does not train on; use "
                                    "l1, l2 or bn_scale")


def _profiles(model: nn.Module, inputs: torch.Tensor, bound: BoundSpace) -> tuple[LayerProfile, ...]:
    """What an optimizer may know of each searched layer (numbers only, never the module)."""
    return tuple(LayerProfile(**row) for row in layer_profiles(model, inputs)  # type: ignore[arg-type]
                 if row["name"] in bound.layers)


def _proxies(ref: OptimizerRef, settings: Mapping[str, Any], model: nn.Module, bound: BoundSpace, rows: Data,
             task: ModelTask, evaluator: CompressionEvaluator, seed: int) -> dict[str, Any]:
    """SearchContext's gradient proxies (autocomp/proxies.py) for an optimizer that wants them, else none."""
    if not optimizer_class(ref).wants_proxies(settings):
        return {}

    def measure(compressed: nn.Module, policy: Policy) -> dict[str, float]:
        return {"size_bytes": float(len(evaluator.artifact(compressed, policy))),
                "flops": float(count_flops(compressed, evaluator.example)[0])}

    table = proxy_table(model, bound, batch_data.head(rows, 256), task, measure=measure,
                        example=evaluator.example, seed=seed)
    return {"proxies": table.entries, "proxy_info": table.info()}


def _space_yaml(space: SearchSpace) -> str:
    """A Python run's space.yaml: its groups, which `SearchSpace.from_yaml` reads back."""
    return "# space given in Python\n" + yaml.safe_dump({"groups": space.to_dict()}, sort_keys=False)


def _check_instance(optimizer: Optimizer, bound: BoundSpace, settings: Mapping[str, Any],
                    directions: Sequence[str]) -> None:
    """A user's optimizer object must search this very space, and takes no settings from us."""
    if settings:
        raise AutocompError("optimizer_settings are for an optimizer name or class; an Optimizer instance "
                            "already has its own")
    if tuple(optimizer.directions) != tuple(directions):
        raise AutocompError(f"the optimizer instance optimizes {list(optimizer.directions)}, the objectives are "
                            f"{list(directions)}: build it with the search's directions")
    mine = [(p.name, repr(p.domain)) for p in bound.params]
    theirs = [(p.name, repr(p.domain)) for p in optimizer.space.params]
    if mine != theirs:
        raise AutocompError(f"the optimizer instance was built on another space (params {theirs[:3]}..., the "
                            f"model's bound space has {mine[:3]}...): build it on space.bind(model)")


def check_optimizer(optimizer: OptimizerRef, settings: Mapping[str, Any], bound: BoundSpace, model: nn.Module,
                    inputs: torch.Tensor, *, directions: Sequence[str], seed: int) -> tuple[LayerProfile, ...]:
    """Build the optimizer once on the bound space, so bad settings fail before anything is written.

    Returns the layer profiles it was given (the run's own optimizer is built later with its workdir).
    """
    profiles = _profiles(model, inputs, bound)
    make_optimizer(optimizer, bound, directions=list(directions), seed=seed, context=SearchContext(layers=profiles),
                   **dict(settings))
    return profiles


def _code_fingerprint(fn: Callable[..., Any]) -> str:
    """Qualified name and a hash of what `fn` computes, the same in every process.

    The hash covers its bytecode, constants (nested functions too), names, defaults and closed-over plain
    values; a `functools.partial` is its function and its bound arguments; a callable object is its class's
    `__call__` and its plain attributes. Values whose text would differ between processes (objects shown
    with their memory address, sets in hash order) are reduced to their type name or sorted.
    """
    args: list[Any] = []
    while isinstance(fn, functools.partial):
        args.append([_stable(a) for a in fn.args] + [[k, _stable(v)] for k, v in sorted(fn.keywords.items())])
        fn = fn.func
    target = getattr(fn, "__func__", fn)
    state: Any = ""
    if not hasattr(target, "__code__"):  # a callable object: its class's __call__, and its state
        state = [[k, _stable(v)] for k, v in sorted(vars(fn).items())] if hasattr(fn, "__dict__") else ""
        target = type(fn).__call__
    code = getattr(target, "__code__", None)
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(fn).__qualname__)}"

    def parts(c: types.CodeType) -> list[Any]:
        consts = [parts(k) if isinstance(k, types.CodeType) else _stable(k) for k in c.co_consts]
        return [c.co_code.hex(), consts, list(c.co_names), c.co_argcount]

    closure = [_stable(cell.cell_contents) for cell in getattr(target, "__closure__", None) or ()]
    defaults = [_stable(d) for d in getattr(target, "__defaults__", None) or ()]
    text = json.dumps([parts(code) if code else name, defaults, closure, state, args])
    return f"{name} sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _stable(value: Any) -> Any:
    """`value` as text that is the same in every process.

    Plain values as they are, sets sorted, containers element by element, anything else by its type (its repr
    may hold a memory address).
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, (set, frozenset)):
        return sorted(_stable(v) for v in value)
    if isinstance(value, (tuple, list)):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return [[_stable(k), _stable(v)] for k, v in value.items()]
    return type(value).__qualname__


def search(
    model: nn.Module,
    val_data: Any,
    *,
    space: SearchSpace,
    objectives: Any = None,
    constraints: Sequence[Constraint] = (),
    optimizer: OptimizerRef | Optimizer = "random",
    optimizer_settings: Mapping[str, Any] | None = None,
    trials: int = 50,
    seed: int = 0,
    test_data: Any = None,
    train_data: Any = None,
    finetune: FineTuneSpec = DEFAULT_FINETUNE,
    calibration_data: Any = None,
    entropy: bool = False,
    extra_metrics: Mapping[str, Callable[[nn.Module], float]] | None = None,
    latency: LatencySpec = DEFAULT_LATENCY,
    execution: ExecutionSpec = DEFAULT_EXECUTION,
    runs_dir: str | os.PathLike = "runs",
    name: str | None = None,
    resume: bool = False,
    progress: bool = True,
    model_ref: Mapping[str, Any] | None = None,
    space_yaml: str | None = None,
    run_info: Mapping[str, Any] | None = None,
    task: TaskRef = "classification",
    val_batches: int | None = None,
    batch_size: int = 1000,
) -> SearchResult:
    """Search compression policies for a trained `model`; the Python entry point.

    Args:
        model: the trained model to compress (never modified).
        val_data: data the search scores on: (inputs, targets) tensors or a DataLoader of batches.
        space: which layers get which primitives and knob ranges.
        objectives: metric names, `Objective`s, or a callable `f(metrics) -> float` to maximize (default: the
            task's primary metric and size_bytes).
        constraints: bounds on metrics; violating trials are kept but never on the Pareto front.
        optimizer: an optimizer name (see `autocomp.optimizers.OPTIMIZERS`), an `Optimizer` subclass (built
            here on the bound space with `optimizer_settings`), or an `Optimizer` instance already built on
            `space.bind(model)` (its params must be the bound space's; resume restores its state).
        optimizer_settings: keyword settings for the optimizer named by `optimizer`.
        trials: how many finished trials the run should hold.
        seed: seeds the optimizer (and the latency calibration's random policies).
        test_data: optional held-out data, used once at the end for the Pareto points.
        train_data: fine-tune each candidate on train_data before it is scored.
        finetune: how candidates are fine-tuned on train_data (see FineTuneSpec).
        calibration_data: a few hundred training rows for activation ranges and Taylor scores
            (default: the first 256 rows of val_data).
        entropy: Huffman-code the packed artifact (its size is what size_bytes measures).
        extra_metrics: user callables `f(compressed_model) -> float`, available to objectives by name.
        latency: how latency is measured, or predicted from a per-layer table (see LatencySpec).
        execution: where candidates are evaluated (in process, or Ray workers locally or on a cluster).
        runs_dir: the run directory is `runs_dir/name`.
        name: the run directory's name (a timestamped name by default).
        resume: continue the run in that directory instead of refusing to reuse it.
        progress: show a progress bar while trials run.
        model_ref: how to rebuild the architecture (zoo name + kwargs), recorded in artifacts' headers.
        space_yaml: the space's YAML text, saved in the run directory (a placeholder when given as objects).
        run_info: extra entries for run.json (the CLI records its run file, model and data here).
        task: what the model is for: "classification" (accuracy), "language-model" (perplexity),
            "regression" (mse), "pkg.module:attr" or a `autocomp.tasks.Task`; its loss trains and distils,
            its metrics score every candidate.
        val_batches: score each candidate on only the first this many validation batches; the test
            measurement always uses all of the test data.
        batch_size: rows per evaluation batch of tensors (a DataLoader's batches are its own).
    """
    model_task = get_task(task)
    objectives = as_objectives(objectives if objectives is not None else (model_task.PRIMARY, "size_bytes"),
                               known=model_task.METRICS)
    val = _as_data(val_data, "val_data")
    _check_task(model_task, model, val)
    check_taylor(model_task, space)
    test = _as_data(test_data, "test_data") if test_data is not None else None
    train = _as_data(train_data, "train_data") if train_data is not None else None
    if finetune.epochs > 0 and train is None:
        raise AutocompError("fine-tuning (finetune.epochs > 0) needs train_data")
    calibration: Pair | None = None
    if calibration_data is not None:  # rows held whole: tensors as given, a loader's first 256 rows
        rows = _as_data(calibration_data, "calibration_data")
        calibration = batch_data.head(rows, len(rows[1]) if batch_data.is_pair(rows) else 256)  # type: ignore[index]
    example = batch_data.head(val, 1)[0]
    bound = space.bind(model, example=example)  # refuses layers a primitive cannot compress, by name
    run_dir = Path(runs_dir) / (name or time.strftime("run-%Y%m%d-%H%M%S"))
    directions, settings = [o.direction for o in objectives], dict(optimizer_settings or {})
    given = optimizer if isinstance(optimizer, Optimizer) else None
    ref: OptimizerRef = type(given) if given is not None else optimizer  # type: ignore[assignment]
    if given is not None:
        _check_instance(given, bound, settings, directions)
        profiles = _profiles(model, example, bound)
    else:
        profiles = check_optimizer(ref, settings, bound, model, example, directions=directions, seed=seed)
    optimizer_label = optimizer_name(ref)
    # what must not change between a run and its resumption, or the journal would mix two searches
    signature = {
        "optimizer": optimizer_label, "optimizer_settings": dict(optimizer_settings or {}), "seed": seed,
        "objectives": [[o.name, o.direction] for o in objectives], "constraints": [vars(c) for c in constraints],
        "params": [[p.name, repr(p.domain)] for p in bound.params], "entropy": entropy,
        "task": model_task.NAME, "val_batches": val_batches, "precision": execution.precision,
        **({"batch_size": batch_size} if val_batches else {}),  # which rows are scored
        "finetune": vars(finetune),
        # a user objective is its code: a resumed run must score its trials with the same function
        # keyed by position: every unnamed callable is called "objective" or "<lambda>"
        "objective_code": {f"{i}:{o.name}": _code_fingerprint(o.fn) for i, o in enumerate(objectives)
                           if o.fn is not None},
    }
    signature = json.loads(json.dumps(signature))  # tuples -> lists, as run.json reads back
    store = None
    if not resume and (run_dir / "run.json").exists():
        raise RunError(f"run directory '{run_dir}' already holds a run: resume it or choose another name")
    if resume:
        store = RunStore.open(run_dir)  # locked first: a second process must not evaluate anything
        info = store.read_json("run.json")
        saved = info.get("signature", {})
        # a key the run predates (e.g. finetune) is not a difference
        changed = sorted(k for k in signature if k in saved and saved[k] != signature[k])
        if "objective_code" in changed:
            store.close()
            now, then = signature["objective_code"], saved["objective_code"]
            names = sorted(n for n in {*now, *then} if now.get(n) != then.get(n))
            raise RunError(f"{run_dir}: resume with the run's own objectives; objective "
                           + ", ".join(f"'{n}' is {now.get(n, 'absent')}, the run was scored by {then.get(n, 'none')}"
                                       for n in names))
        if changed:
            store.close()
            was = "; ".join(f"{k}={saved.get(k)}" for k in changed)
            raise RunError(f"{run_dir}: resume with the run's own settings; these differ: {', '.join(changed)} "
                           f"(the run has {was})")
    executor = None
    try:
        table = None
        if latency.table:
            table = _latency_table(model, bound, val, calibration, latency, seed, run_dir, Path(runs_dir))
        evaluator = CompressionEvaluator(model, val, latency=latency, model_ref=model_ref,
                                         extra_metrics=extra_metrics, calibration=calibration,
                                         entropy=entropy, train=train, finetune=finetune, latency_table=table,
                                         test=test, task=model_task, val_batches=val_batches,
                                         eval_batch_size=batch_size,
                                         device=execution.device, precision=execution.precision)
        baseline = evaluator(Policy.of({}))
        anchor = None
        if table is not None:  # budgets relative to the baseline are relative to its measured latency
            measured = evaluator.measured_latency(evaluator.model)
            if resume and info.get("latency_anchor"):  # the unit the journaled predictions are in
                anchor = info["latency_anchor"]
                table.scale = anchor["scale"]
            else:  # the table's (cached) times in today's ms: the machine may run slower or faster than then
                anchor = _anchor(table, evaluator, bound, seed, measured["latency_ms"])
            baseline["latency_predicted_ms"] = table.predict(evaluator.model, evaluator.example, evaluator.model_key)
            baseline.update(measured)
        try:
            resolved = [c.resolved(baseline) for c in constraints]
        except ValueError as err:
            raise AutocompError(str(err)) from None
        if resume and info.get("constraints_resolved"):  # the bounds the journaled trials were judged by
            resolved = [Constraint(**c) for c in info["constraints_resolved"]]
        executor = _start_executor(execution, evaluator, run_dir)  # before any write: a bad address leaves none
        if store is None:
            info = {
                **(run_info or {}),
                "settings": {"optimizer": optimizer_label, "optimizer_settings": dict(optimizer_settings or {}),
                             "trials": trials, "seed": seed},
                "signature": signature,
                "task": task_reference(task),  # how finalize, export and the report find it again
                "objectives": [{"name": o.name, "direction": o.direction} for o in objectives],
                "constraints": [vars(c) for c in constraints],
                "latency": {**vars(latency), **vars(evaluator.conditions),
                            "measured": "median wall time of the compressed model's forward pass"
                            + (" (predicted from the layer table during the search)" if table else "")},
                "machine": machine_info(),
                "device": {"setting": execution.device, "evaluated_on": device_name(evaluator.device),
                           "precision": execution.precision},
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            store = RunStore.create(run_dir, space_yaml=space_yaml or _space_yaml(space),
                                    run_info=info)
        info["baseline"] = baseline
        info["constraints_resolved"] = [vars(c) for c in resolved]
        if table is not None:
            info["latency_calibration"] = table.calibrations.get(evaluator.model_key)
            info["latency_anchor"] = anchor
            table.save(store.path / LatencyTable.FILE)
        info["executor"] = describe(executor)  # the latest; a run may be resumed elsewhere
        store.write_json("run.json", info)
        opt = given or make_optimizer(ref, bound, directions=directions, seed=seed,
                                      context=SearchContext(
                                          layers=profiles, workdir=str(store.path),
                                          objectives=tuple(o.name for o in objectives),
                                          **_proxies(ref, settings, model, bound, calibration or val, model_task,
                                                     evaluator, seed)), **settings)
        done = run_loop(store, bound, opt, executor, objectives, resolved, trials, progress=progress,
                        bars=_bars_rule(finetune, model_task.PRIMARY, model_task.METRICS[model_task.PRIMARY]))
        if val_batches is not None:  # the front was chosen on the first batches: choose it again on all
            done, baseline = rescore_front(executor, done, objectives, constraints, baseline)
        tested = measure_test(executor, front_of(done, objectives)) if test is not None else None
        executor.close()
        executor = None
        if table is not None:  # what in-process evaluations added (Ray workers keep their own misses)
            table.save(store.path / LatencyTable.FILE)
            _save_to_cache(table, Path(runs_dir))
        title = f"{run_dir.name}: {optimizer_label}, {len(done)} trials"
        return write_front(store, done, objectives, baseline, evaluator=evaluator, test_metrics=tested,
                           title=title, task=model_task.NAME, metric=model_task.PRIMARY)
    finally:
        if executor is not None:  # Ctrl-C or an error: workers are stopped before we return
            executor.close()
        if store is not None:
            store.close()


def _save_to_cache(table: LatencyTable, runs_dir: Path) -> None:
    path = cache_path(runs_dir, table.conditions)
    cached = LatencyTable.load(path, table.conditions)
    cached.entries.update(table.entries)
    cached.calibrations.update(table.calibrations)
    cached.save(path)


def _latency_table(model: nn.Module, bound: BoundSpace, val: Data, calibration: Pair | None, latency: LatencySpec,
                   seed: int, run_dir: Path, runs_dir: Path) -> LatencyTable:
    """The run's layer table (on resume its own), else the machine's cached one, calibrated for `model`.

    When not yet calibrated for `model`, it is calibrated on the uncompressed model and 8 random policies of
    the space.
    """
    conditions = Conditions.here(latency.runtime, latency.batch_size, latency.threads)
    rows = calibration if calibration is not None else batch_data.head(val, 256)
    first = batch_data.head(val, latency.batch_size)[0]
    table = calibrated_table(model, first[:1], latency_batch(first, latency.batch_size), conditions,
                             calibration_policies(bound, seed),
                             calibration=rows, saved=[run_dir / LatencyTable.FILE, cache_path(runs_dir, conditions)],
                             warmup=latency.warmup, repeats=latency.repeats, log=tqdm.write)
    _save_to_cache(table, runs_dir)
    return table


def _anchor(table: LatencyTable, evaluator: CompressionEvaluator, bound: BoundSpace, seed: int,
            baseline_ms: float) -> dict[str, Any]:
    """Anchor the table to now: the uncompressed model and the calibration's policies, timed whole."""
    models = [evaluator.model] + [
        compress(evaluator.model, p, example=evaluator.example, calibration=evaluator.calibration)
        for p in calibration_policies(bound, seed)]
    measured = [baseline_ms] + [evaluator.measured_latency(m)["latency_ms"] for m in models[1:]]
    anchor = table.anchor(models, evaluator.example, evaluator.model_key, measured)
    tqdm.write(f"latency table: {anchor['models']} models timed now run {anchor['ratio_min']:.3f}-"
               f"{anchor['ratio_max']:.3f}x their table time: predictions are scaled by {anchor['scale']:.3f}")
    return anchor


def _bars_rule(spec: FineTuneSpec, metric: str = "accuracy",
               direction: str = "maximize") -> Callable[[Sequence[Trial]], dict[int, float]] | None:
    """The multi-fidelity rule of a run: journaled learning curves of `metric` -> early-stopping bars."""
    if spec.early_stop == "none" or spec.epochs < 2:
        return None

    def rule(trials: Sequence[Trial]) -> dict[int, float]:
        curves = (early_stop.curve(t.metrics, metric) for t in trials if t.status in ("complete", "pruned"))
        return early_stop.bars(curves, spec.early_stop, spec.epochs, min_epochs=spec.min_epochs, eta=spec.eta,
                               startup=spec.startup, maximize=direction == "maximize")
    return rule


def _start_executor(execution: ExecutionSpec, evaluator: CompressionEvaluator, run_dir: Path) -> Executor:
    try:
        return make_executor(execution, evaluator, log_dir=run_dir / "ray-logs")
    except (ValueError, ConnectionError, RuntimeError, TimeoutError) as err:
        where = f" at {execution.address}" if execution.address else ""
        raise RunError(f"cannot start the {execution.executor} executor{where}: {err}") from err


def trial_record(run_dir: str | os.PathLike, trial_id: int) -> dict[str, Any]:
    """The journaled record of one trial (read without taking the run's lock)."""
    for record in RunStore(run_dir).trials():
        if record["id"] == trial_id:
            return record
    raise RunError(f"{run_dir}: no trial with id {trial_id}")


__all__ = ["SearchResult", "Trial", "check_optimizer", "front_of", "run_loop", "search", "write_front"]
