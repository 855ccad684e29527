"""Evaluate candidates one after another in the calling process."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from autocomp.execution.base import EvaluateFn, EvaluationTimeout, Outcome, Task, evaluate_safely, timeout_outcome


@contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise EvaluationTimeout in this (main) thread after `seconds`; a no-op when None."""
    if seconds is None:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise EvaluationTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class InProcessExecutor:
    """One worker: the calling process.

    A per-trial `timeout` interrupts an evaluation with SIGALRM, so it needs the main thread (Ray workers
    are the way to bound evaluations that ignore signals).
    """

    workers = 1

    def __init__(self, evaluate: EvaluateFn, *, timeout: float | None = None) -> None:
        if timeout is not None and threading.current_thread() is not threading.main_thread():
            raise ValueError("a per-trial timeout in process needs the main thread (use the Ray executor)")
        self.evaluate = evaluate
        self.timeout = timeout
        self.worker = f"local:{os.getpid()}"
        self.queue: deque[Task] = deque()

    def submit(self, task: Task) -> None:
        """Queue the task; it runs when its outcome is asked for."""
        self.queue.append(task)

    def next_outcome(self) -> Outcome:
        """Evaluate the oldest queued task here and now, under the per-trial timeout if set."""
        task = self.queue.popleft()
        start = time.perf_counter()
        try:
            with _alarm(self.timeout):
                return evaluate_safely(self.evaluate, task, self.worker)
        except EvaluationTimeout as err:  # the alarm hit just outside evaluate_safely's handler
            return timeout_outcome(task, err.limit, time.perf_counter() - start, self.worker)

    def describe(self) -> dict[str, Any]:
        """What run.json records: in process, one worker, and the timeout."""
        return {"executor": "inprocess", "workers": 1, "timeout": self.timeout}

    def close(self) -> None:
        """Drop the tasks not yet run."""
        self.queue.clear()
