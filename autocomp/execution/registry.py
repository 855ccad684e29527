"""Execution settings (the run file's `execution:`) and the executors they name, by name.

Adding an executor is one call: `register_executor("name", factory)`, where `factory(spec, evaluate,
log_dir=...)` returns an `Executor`; `execution: {executor: name}` and `--executor name` then reach it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from autocomp.devices import DEVICES, PRECISIONS, valid_device
from autocomp.execution.base import EvaluateFn, Executor
from autocomp.execution.inprocess import InProcessExecutor
from autocomp.schema import At, integer, non_negative, one_of, optional, positive, setting, string

# (settings, evaluate, log_dir) -> a started executor
ExecutorFactory = Callable[..., Executor]
EXECUTORS: dict[str, ExecutorFactory] = {}


def register_executor(name: str, factory: ExecutorFactory) -> None:
    """Make `factory(spec: ExecutionSpec, evaluate, *, log_dir)` the executor called `name`."""
    EXECUTORS[name] = factory


def executor_names() -> list[str]:
    """The names `execution.executor` accepts."""
    return list(EXECUTORS)


def _device(value: object, at: At) -> str:
    """A device setting: auto, cpu, cuda, cuda:N or mps (whether this machine has it is checked at start)."""
    if not isinstance(value, str) or not valid_device(value):
        raise at.fail(f"unknown device; known: {', '.join(DEVICES)}", value)
    return value


@dataclass(frozen=True, kw_only=True)
class ExecutionSpec:
    """Where candidates are evaluated: in this process, or on Ray workers (a local Ray or a cluster).

    `workers` evaluations run at once, each with `threads` torch threads and `num_cpus`/`num_gpus` Ray
    resources; unset, they follow from the cores (workers x threads <= cores). `timeout` (seconds) fails an
    evaluation that runs longer; `retries` is how often a trial whose worker died is run again.
    `device` is where evaluation and fine-tuning run (`auto`: a GPU if there is one; each Ray worker with
    `num_gpus` sees its own), `precision` the autocast precision of their forward passes (fp32, bf16, fp16).
    Apart from `precision` (which changes the metrics), not part of a run's identity: a run started here may
    be resumed on a cluster.
    """

    executor: str = setting("inprocess", one_of(executor_names, "executor"))
    workers: int | None = setting(None, optional(integer(1, 100_000)))
    threads: int | None = setting(None, optional(integer(1, 1024)))
    address: str | None = setting(None, optional(string))
    num_cpus: float | None = setting(None, optional(positive))
    num_gpus: float = setting(0.0, non_negative)
    timeout: float | None = setting(None, optional(positive))
    retries: int = setting(1, integer(0, 100))
    device: str = setting("cpu", _device)
    precision: str = setting("fp32", one_of(tuple(PRECISIONS), "precision"))


DEFAULT_EXECUTION = ExecutionSpec()


def make_executor(spec: ExecutionSpec, evaluate: EvaluateFn, *, log_dir: str | os.PathLike | None = None) -> Executor:
    """The executor `spec` names, started."""
    if spec.executor not in EXECUTORS:
        raise ValueError(f"unknown executor '{spec.executor}' (known: {', '.join(EXECUTORS)})")
    return EXECUTORS[spec.executor](spec, evaluate, log_dir=log_dir)


def _in_process(spec: ExecutionSpec, evaluate: EvaluateFn, *, log_dir: str | os.PathLike | None = None) -> Executor:
    return InProcessExecutor(evaluate, timeout=spec.timeout)


def _ray(spec: ExecutionSpec, evaluate: EvaluateFn, *, log_dir: str | os.PathLike | None = None) -> Executor:
    # imported when asked for: Ray takes seconds to import and most runs are in process
    from autocomp.execution.ray_executor import RayExecutor

    return RayExecutor(evaluate, workers=spec.workers, threads=spec.threads, address=spec.address,
                       num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, timeout=spec.timeout,
                       retries=spec.retries, log_dir=log_dir)


register_executor("inprocess", _in_process)
register_executor("ray", _ray)
