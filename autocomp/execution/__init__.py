"""Executors: where compress + evaluate runs (in this process, or on Ray workers locally or on a cluster)."""

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
from autocomp.execution.registry import (
    DEFAULT_EXECUTION,
    EXECUTORS,
    ExecutionSpec,
    ExecutorFactory,
    executor_names,
    make_executor,
    register_executor,
)

__all__ = ["DEFAULT_EXECUTION", "EXECUTORS", "EvaluateFn", "EvaluationTimeout", "ExecutionSpec", "Executor",
           "ExecutorFactory", "InProcessExecutor", "Outcome", "Task", "describe", "evaluate_safely",
           "executor_names", "make_executor", "register_executor", "run_all"]
