"""RunSpec: everything one run file says, each section the settings of the component that owns it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autocomp.artifacts import ArtifactSpec
from autocomp.execution import ExecutionSpec
from autocomp.finetune import FineTuneSpec
from autocomp.objective import Constraint, Objective
from autocomp.optimizers import OptimizerSpec
from autocomp.runtimes import LatencySpec
from autocomp.space import SearchSpace
from autocomp.zoo.train import TrainSpec


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A zoo model name (or a `module:attr` factory) with keyword arguments, and optional weights."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """A dataset or data source and its splits.

    `name` is a built-in dataset (`mnist5k` ships with the install; `mnist`, `cifar10` need a directory), a data
    source (`imagefolder`, `npz`, `idx`, `text`) or a `"pkg.module:factory"`; `options` holds the source's own
    keys (written flat under `data:` in a run file, e.g. `block_size` for `text`, `kwargs` for a factory).
    """

    name: str
    dir: str | None = None
    val_fraction: float = 0.1
    batch_size: int = 500  # rows per evaluation batch
    val_batches: int | None = None  # score candidates on only the first this many validation batches
    options: Mapping[str, Any] = field(default_factory=dict)


DEFAULT_TRIALS = 40
DEFAULT_TASK = "classification"
DEFAULT_OBJECTIVES = (Objective(name="accuracy", direction="maximize"),
                      Objective(name="size_bytes", direction="minimize"))


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything one run file says: what to compress, on which data, the space, and each component's settings.

    The components' settings are `train`, `finetune`, `latency`, `artifact`, `optimizer` and `execution`.
    """

    model: ModelSpec
    data: DataSpec
    space: SearchSpace
    task: str = DEFAULT_TASK  # a built-in task name or a "pkg.module:attr" reference
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES
    constraints: tuple[Constraint, ...] = ()
    train: TrainSpec = field(default_factory=TrainSpec)
    latency: LatencySpec = field(default_factory=LatencySpec)
    artifact: ArtifactSpec = field(default_factory=ArtifactSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    finetune: FineTuneSpec = field(default_factory=FineTuneSpec)
    trials: int | None = None  # how many evaluated trials a search runs (`--trials` overrides it)
    source: str | None = None  # the file it came from

    def trial_count(self, given: int | None) -> int:
        """The trials a search of this file runs: `given` (the command line's), else the file's, else 40."""
        return given or self.trials or DEFAULT_TRIALS
