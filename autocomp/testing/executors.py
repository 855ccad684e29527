"""Executor conformance: the same metrics as a direct call, and every kind of failing candidate recorded.

`FaultyEvaluator` wraps an evaluator so chosen policies misbehave; it lives in the package (not in tests/)
because Ray workers must be able to import it.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from autocomp.execution import Executor, Outcome, Task, run_all
from autocomp.policy import Policy

FAULTS = ("raise", "nan", "hang", "die", "die-once")
HANG_SECONDS = 3600.0


class FaultyEvaluator:
    """Evaluates like `evaluate`, except for policies whose fingerprint is in `faults`.

    Faults: raise: an exception; nan: a NaN accuracy; hang: sleeps for an hour; die: SIGKILLs its own process
    (every time); die-once: SIGKILLs its own process the first time only (a marker file in `marker_dir`
    remembers, since the restarted worker remembers nothing).
    """

    def __init__(self, evaluate: Callable[[Policy], Mapping[str, float]], faults: Mapping[str, str],
                 marker_dir: str | os.PathLike | None = None) -> None:
        unknown = sorted(set(faults.values()) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
        self.evaluate = evaluate
        self.faults = dict(faults)
        self.marker_dir = str(marker_dir) if marker_dir else None

    def __call__(self, policy: Policy) -> dict[str, float]:
        """The metrics of `evaluate`, or the fault injected for this policy."""
        key = policy.fingerprint()
        fault = self.faults.get(key)
        if fault == "raise":
            raise RuntimeError("injected failure")
        if fault == "hang":
            time.sleep(HANG_SECONDS)
        if fault == "die" or (fault == "die-once" and self._first_time(key)):
            os.kill(os.getpid(), signal.SIGKILL)
        metrics = dict(self.evaluate(policy))
        if fault == "nan":
            metrics["accuracy"] = math.nan
        return metrics

    def _first_time(self, key: str) -> bool:
        marker = Path(self.marker_dir or ".") / f"died-{key}"
        try:
            marker.open("x").close()  # atomic: exactly one process creates it
        except FileExistsError:
            return False
        return True


class ScrambledExecutor:
    """`workers` slots that finish out of order, deterministically: the newest task in flight first.

    Stands in for parallel workers in tests of the search loop; `most_in_flight` records how busy the
    optimizer kept them.
    """

    def __init__(self, evaluate: Callable[[Policy], Mapping[str, float]], workers: int) -> None:
        self.evaluate, self.workers = evaluate, workers
        self.in_flight: dict[int, Task] = {}
        self.most_in_flight = 0

    def submit(self, task: Task) -> None:
        """Hold the task (nothing runs until `next_outcome`) and note the most held at once."""
        self.in_flight[task.trial_id] = task
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))

    def next_outcome(self) -> Outcome:
        """Evaluate the newest task in flight (highest trial id) and return its outcome."""
        task = self.in_flight.pop(max(self.in_flight))
        return Outcome(task.trial_id, "complete", dict(self.evaluate(task.policy)), worker="scrambled")

    def close(self) -> None:
        """Drop the tasks still in flight."""
        self.in_flight.clear()


def hashed_metrics(policy: Policy) -> dict[str, float]:
    """Arbitrary but fixed metrics of a policy (for tests of the loop, not of the optimizers)."""
    digest = policy.fingerprint()
    return {"accuracy": int(digest[:8], 16) % 1000 / 1000, "size_bytes": float(int(digest[8:16], 16) % 100_000 + 1)}


def sample_policies(space, n: int, seed: int = 0) -> list[Policy]:
    """`n` distinct random policies of a bound space."""
    rng = np.random.default_rng(seed)
    policies: dict[str, Policy] = {}
    while len(policies) < n:
        policy = Policy.from_params(space, space.sample(rng))
        policies.setdefault(policy.fingerprint(), policy)
    return list(policies.values())


def outcomes_by_id(executor: Executor, policies: Sequence[Policy]) -> dict[int, Outcome]:
    """Run every policy (trial id = its index) and return the outcomes by id, asserting one per task."""
    outcomes = {o.trial_id: o for o in run_all(executor, [Task(i, p) for i, p in enumerate(policies)])}
    assert sorted(outcomes) == list(range(len(policies))), "every submitted task gives exactly one outcome"
    return outcomes


def check_same_metrics(executor: Executor, evaluate: Callable[[Policy], Mapping[str, float]],
                       policies: Sequence[Policy], ignore: Sequence[str] = ("latency_ms", "latency_iqr_ms")) -> None:
    """The executor's metrics equal a direct call's, key for key (timings aside)."""
    outcomes = outcomes_by_id(executor, policies)
    for i, policy in enumerate(policies):
        direct = {k: float(v) for k, v in evaluate(policy).items() if k not in ignore}
        got = {k: v for k, v in outcomes[i].metrics.items() if k not in ignore}
        assert outcomes[i].status == "complete", outcomes[i].error
        assert got == direct, f"policy {i}: {got} != {direct}"


def check_faults(executor: Executor, policies: Sequence[Policy], faults: Mapping[int, str]) -> dict[int, Outcome]:
    """Run `policies`: every faulty one is `failed` with its reason, every other one `complete`.

    The executor's evaluator must be a FaultyEvaluator set up with `faults` by index.
    """
    expected = {"raise": "injected failure", "nan": "non-finite metrics: accuracy", "hang": "timeout",
                "die": "worker died"}
    outcomes = outcomes_by_id(executor, policies)
    for i, outcome in outcomes.items():
        fault = faults.get(i)
        if fault in expected:
            assert outcome.status == "failed", f"policy {i} ({fault}) should fail: {outcome}"
            assert expected[fault] in (outcome.error or ""), f"policy {i} ({fault}): {outcome.error}"
        else:  # no fault, or one that a retry gets past (die-once)
            assert outcome.status == "complete", f"policy {i} ({fault}): {outcome.error}"
    return outcomes


__all__ = ["FAULTS", "FaultyEvaluator", "ScrambledExecutor", "check_faults", "check_same_metrics", "hashed_metrics",
           "outcomes_by_id", "sample_policies"]
