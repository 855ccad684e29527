"""Executors: where compress + evaluate runs (in process now; Ray later)."""

from autocomp.execution.base import EvaluateFn, Executor, Outcome, Task, evaluate_safely
from autocomp.execution.inprocess import InProcessExecutor

__all__ = ["EvaluateFn", "Executor", "InProcessExecutor", "Outcome", "Task", "evaluate_safely"]
