"""The executor interface: run evaluations of policies and stream their outcomes."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from autocomp.policy import Policy

EvaluateFn = Callable[[Policy], Mapping[str, float]]


@dataclass(frozen=True)
class Task:
    trial_id: int
    policy: Policy


@dataclass(frozen=True)
class Outcome:
    """What became of one task: `complete` with metrics, or `failed` with the reason."""

    trial_id: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""


class Executor(Protocol):
    workers: int

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """Evaluate the tasks, yielding each outcome as soon as it is known (any order)."""
        ...

    def close(self) -> None: ...


def evaluate_safely(evaluate: EvaluateFn, task: Task, worker: str) -> Outcome:
    """Run one evaluation; an exception or a non-finite metric makes the trial failed, never the search."""
    start = time.perf_counter()
    try:
        metrics = {k: float(v) for k, v in evaluate(task.policy).items()}
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"non-finite metrics: {', '.join(bad)}")
    except Exception as err:  # a candidate's failure is data, not a crash
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        return Outcome(task.trial_id, "failed", error=detail, seconds=time.perf_counter() - start, worker=worker)
    return Outcome(task.trial_id, "complete", metrics, seconds=time.perf_counter() - start, worker=worker)


def describe(executor: Any) -> str:
    return f"{type(executor).__name__}(workers={executor.workers})"
