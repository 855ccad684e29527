"""The executor interface: run evaluations of policies and stream their outcomes."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from autocomp.errors import CandidateInfeasible, CandidateStopped
from autocomp.policy import Policy

if TYPE_CHECKING:  # a sibling layer: constraints arrive as objects, used by their interface
    from autocomp.objective import Constraint

EvaluateFn = Callable[[Policy], Mapping[str, float]]


@dataclass(frozen=True)
class Task:
    """One evaluation: a trial id and its policy, with what lets the evaluator cut it short.

    `bars` (epoch -> accuracy needed to go on) lets the evaluator stop it early, and `limits` (the run's
    resolved constraints) let it skip a candidate whose structure already breaks one.
    """

    trial_id: int
    policy: Policy
    bars: Mapping[int, float] = field(default_factory=dict)
    limits: tuple[Constraint, ...] = ()
    split: str = "val"  # "test": measure a chosen point once on the held-out split


@dataclass(frozen=True)
class Outcome:
    """What became of one task: `complete`, `failed`, `pruned` or `infeasible`.

    `complete` with metrics, `failed` with the reason, `pruned` (stopped early on purpose, with what was
    measured until then), or `infeasible` (outside a constraint before any fine-tuning, with the structural
    metrics that show it).
    """

    trial_id: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""


class Executor(Protocol):
    """Runs evaluations, `workers` at a time: submit tasks, then collect outcomes as they finish."""

    workers: int

    def submit(self, task: Task) -> None:
        """Queue one evaluation; it starts as soon as a worker is free."""

    def next_outcome(self) -> Outcome:
        """Block until one submitted task has finished (in any order) and return its outcome."""
        ...

    def close(self) -> None:
        """Stop the workers; the executor is not used again."""


def run_all(executor: Executor, tasks: Iterable[Task]) -> Iterator[Outcome]:
    """Submit every task and yield the outcomes in the order they finish."""
    submitted = 0
    for task in tasks:
        executor.submit(task)
        submitted += 1
    for _ in range(submitted):
        yield executor.next_outcome()


class EvaluationTimeout(Exception):
    """An evaluation ran past the per-trial timeout (`limit` seconds)."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"timeout: the evaluation ran past {limit:g} s")
        self.limit = limit


def timeout_outcome(task: Task, limit: float, elapsed: float, worker: str) -> Outcome:
    """The failed outcome of a task that ran past its per-trial time `limit`."""
    return Outcome(task.trial_id, "failed", error=str(EvaluationTimeout(limit)), seconds=elapsed, worker=worker)


def evaluate_safely(evaluate: EvaluateFn, task: Task, worker: str) -> Outcome:
    """Run one evaluation; an exception or a non-finite metric makes the trial failed, never the search."""
    start = time.perf_counter()
    try:
        # only what a task carries is passed, so an evaluator without early stopping needs no such arguments
        extras: dict[str, Any] = {k: v for k, v in (("bars", task.bars), ("limits", task.limits)) if v}
        if task.split != "val":
            extras["split"] = task.split
        result = evaluate(task.policy, **extras)  # type: ignore[call-arg]
        metrics = {k: float(v) for k, v in result.items()}
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"non-finite metrics: {', '.join(bad)}")
    except EvaluationTimeout as err:
        return timeout_outcome(task, err.limit, time.perf_counter() - start, worker)
    except CandidateStopped as stop:
        return Outcome(task.trial_id, "pruned", dict(stop.metrics), error=str(stop),
                       seconds=time.perf_counter() - start, worker=worker)
    except CandidateInfeasible as skip:
        return Outcome(task.trial_id, "infeasible", dict(skip.metrics), error=str(skip),
                       seconds=time.perf_counter() - start, worker=worker)
    except Exception as err:  # a candidate's failure is data, not a crash
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        return Outcome(task.trial_id, "failed", error=detail, seconds=time.perf_counter() - start, worker=worker)
    return Outcome(task.trial_id, "complete", metrics, seconds=time.perf_counter() - start, worker=worker)


def describe(executor: Any) -> dict[str, Any]:
    """What run.json records about the executor (its own `describe()` where it has one)."""
    own = getattr(executor, "describe", None)
    return own() if callable(own) else {"executor": type(executor).__name__, "workers": executor.workers}
