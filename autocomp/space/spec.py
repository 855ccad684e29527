"""What a search-space file describes besides the space itself: model, data, objectives, budgets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autocomp.space.space import SearchSpace

# metrics an objective or constraint may name, with the direction that is better
METRICS: dict[str, str] = {
    "accuracy": "maximize",
    "accuracy_drop": "minimize",
    "size_bytes": "minimize",
    "compression_ratio": "maximize",
    "params": "minimize",
    "flops": "minimize",
    "latency_ms": "minimize",
    "peak_activation_bytes": "minimize",
    "energy_uj": "minimize",
}

# where a latency is measured (autocomp.runtimes runs them)
RUNTIMES = ("torch", "torch-int8", "onnx", "onnx-int8")
# a budget relative to the uncompressed model: "0.5x" is half the baseline's value
RELATIVE = re.compile(r"(\d+(\.\d*)?|\.\d+)(e-?\d+)?x")


def parse_bound(bound: float | str) -> float:
    """The number in a bound: 3.0 for 3.0, 0.5 for "0.5x"."""
    return float(bound[:-1]) if isinstance(bound, str) else float(bound)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A zoo model name (or a `module:attr` factory) with keyword arguments, and optional weights."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """A dataset name (`mnist5k` ships with the install; `mnist` needs a directory) and its splits."""

    name: str
    dir: str | None = None
    val_fraction: float = 0.1
    batch_size: int = 500


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """How the baseline is trained when no weights are given (seeded, cached)."""

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class LatencySpec:
    """Conditions of the latency measurement, recorded in run.json beside the numbers.

    `runtime` is what the latency is measured in (see autocomp.runtimes): torch (eager fp32), torch-int8,
    onnx (ONNX Runtime fp32) or onnx-int8 (QDQ). `table: true` predicts each candidate's latency from the
    per-layer lookup table (autocomp.latency_table) instead of timing it; the Pareto points are then
    measured and the prediction error reported.
    """

    batch_size: int = 1
    threads: int = 1
    warmup: int = 10
    repeats: int = 50
    runtime: str = "torch"
    table: bool = False


@dataclass(frozen=True, kw_only=True)
class FineTuneSpec:
    """Fine-tuning of each candidate after compression (0 epochs: none), on the training split.

    An epoch is one pass over the training data, or `steps` batches of it when set (short epochs for the
    search; `autocomp finalize` retrains longer). `schedule: cosine` decays the lr to 0 over all
    planned steps (for longer retraining). `kd_alpha` > 0 distils from the uncompressed model
    at `temperature`. `l1` / `group_lasso` add penalties that push weights (or whole output channels) to zero,
    so the next pruning step (finalize's iterations) removes what they made small. `early_stop` stops weak
    candidates after an epoch (multi-fidelity; trials `pruned`).
    """

    epochs: int = 0
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-4
    optimizer: str = "adam"
    schedule: str = "constant"  # constant | cosine (lr decays to 0 over all planned steps)
    kd_alpha: float = 0.0
    temperature: float = 4.0
    seed: int = 0
    l1: float = 0.0  # penalty weights on the compressible layers' weights (regularisation-based pruning)
    group_lasso: float = 0.0
    early_stop: str = "none"  # none | median | halving (see autocomp.early_stop)
    min_epochs: int = 1
    eta: int = 3
    startup: int = 5


FINETUNE_OPTIMIZERS = ("adam", "sgd")
FINETUNE_SCHEDULES = ("constant", "cosine")
EARLY_STOP_RULES = ("none", "median", "halving")


@dataclass(frozen=True, kw_only=True)
class ExecutionSpec:
    """Where candidates are evaluated: in this process, or on Ray workers (a local Ray or a cluster).

    `workers` evaluations run at once, each with `threads` torch threads and `num_cpus`/`num_gpus` Ray
    resources; unset, they follow from the cores (workers x threads <= cores). `timeout` (seconds) fails an
    evaluation that runs longer; `retries` is how often a trial whose worker died is run again.
    Not part of a run's identity: a run started here may be resumed on a cluster.
    """

    executor: str = "inprocess"
    workers: int | None = None
    threads: int | None = None
    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float = 0.0
    timeout: float | None = None
    retries: int = 1


EXECUTORS = ("inprocess", "ray")


@dataclass(frozen=True, kw_only=True)
class ArtifactSpec:
    """How the packed artifact is written: `entropy` Huffman-codes codes and index gaps (Deep Compression's
    "+H") wherever that is smaller, tables included. size_bytes is measured on the artifact so written."""

    entropy: bool = False


@dataclass(frozen=True, kw_only=True)
class ObjectiveSpec:
    metric: str
    direction: str


@dataclass(frozen=True, kw_only=True)
class ConstraintSpec:
    """A bound on a metric; a candidate outside it is infeasible (kept, never on the Pareto front).

    A bound is a number, or a fraction of the uncompressed model's value written "0.5x".
    """

    metric: str
    min: float | str | None = None
    max: float | str | None = None


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """Which optimizer runs by default (`--optimizer` overrides it) and settings per optimizer name.

    The names and settings are checked against the optimizers when the search starts; `lines` says where
    each block was written, for those errors.
    """

    name: str | None = None
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything one search-space file says."""

    model: ModelSpec
    data: DataSpec
    space: SearchSpace
    objectives: tuple[ObjectiveSpec, ...] = (
        ObjectiveSpec(metric="accuracy", direction="maximize"),
        ObjectiveSpec(metric="size_bytes", direction="minimize"),
    )
    constraints: tuple[ConstraintSpec, ...] = ()
    train: TrainSpec = field(default_factory=TrainSpec)
    latency: LatencySpec = field(default_factory=LatencySpec)
    artifact: ArtifactSpec = field(default_factory=ArtifactSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    finetune: FineTuneSpec = field(default_factory=FineTuneSpec)
    source: str | None = None  # the file it came from


DEFAULT_LATENCY = LatencySpec()
DEFAULT_EXECUTION = ExecutionSpec()
DEFAULT_FINETUNE = FineTuneSpec()
