"""Executors: where compress + evaluate runs (in this process, or on Ray workers locally or on a cluster)."""

from __future__ import annotations

import os

from autocomp.execution.base import (
    EvaluateFn,
    EvaluationTimeout,
    Executor,
    Outcome,
    Task,
    describe,
    evaluate_safely,
    run_all,
)
from autocomp.execution.inprocess import InProcessExecutor
from autocomp.space.spec import ExecutionSpec


def make_executor(spec: ExecutionSpec, evaluate: EvaluateFn, *, log_dir: str | os.PathLike | None = None) -> Executor:
    """The executor `spec` names; Ray is imported only when it is asked for."""
    if spec.executor == "inprocess":
        return InProcessExecutor(evaluate, timeout=spec.timeout)
    from autocomp.execution.ray_executor import RayExecutor

    return RayExecutor(evaluate, workers=spec.workers, threads=spec.threads, address=spec.address,
                       num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, timeout=spec.timeout,
                       retries=spec.retries, log_dir=log_dir)


__all__ = ["EvaluateFn", "EvaluationTimeout", "Executor", "InProcessExecutor", "Outcome", "Task", "describe",
           "evaluate_safely", "make_executor", "run_all"]
