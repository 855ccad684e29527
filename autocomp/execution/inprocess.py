"""Evaluate candidates one after another in the calling process."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from autocomp.execution.base import EvaluateFn, Outcome, Task, evaluate_safely


class InProcessExecutor:
    workers = 1

    def __init__(self, evaluate: EvaluateFn) -> None:
        self.evaluate = evaluate
        self.worker = f"local:{os.getpid()}"

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        for task in tasks:
            yield evaluate_safely(self.evaluate, task, self.worker)

    def close(self) -> None:
        pass
