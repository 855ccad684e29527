"""autocomp: search-based compression for PyTorch; every size and latency measured on the exported artifact.

The public API (see the README's "Python API" and "Extending autocomp"):

- `search(model, val_data, space=..., optimizer=<name | Optimizer subclass | instance>)` -> `SearchResult`
- `SearchSpace.from_yaml(text)` / `.from_dict(groups)`, or `Group` / `KnobSpec` / `Selector` objects
- `compress(model, policy)` (a `Policy` or a trial's `.policy`), `export(model_or_trial, path=..., format=...)`,
  `load_packed(path, model)`
- primitive configs (`Channels`, `Heads`, `Skip`, `Substitute`, `LowRank`, `Prune`, `Share`, `Quantize`) and the
  extension points `register_primitive`, `register_optimizer` (with the `Optimizer` base class),
  `register_runtime` (with `Runtime`) and `register_executor`.
"""

from autocomp.artifacts import export, load_packed
from autocomp.compress import compress
from autocomp.config import load_run_spec, parse_run_spec
from autocomp.execution import ExecutionSpec, Executor, register_executor
from autocomp.finetune import FineTuneSpec
from autocomp.objective import Constraint, Objective
from autocomp.optimizers import Optimizer, SearchContext, Told, register_optimizer
from autocomp.policy import Policy
from autocomp.primitives import (
    Channels,
    Heads,
    KnobRange,
    LowRank,
    PrimitiveConfig,
    Prune,
    Quantize,
    Share,
    Skip,
    Substitute,
    register_primitive,
)
from autocomp.runner import SearchResult, Trial, search
from autocomp.runtimes import LatencySpec, Runtime, register_runtime
from autocomp.space import BoundSpace, Choice, FloatRange, Group, IntRange, KnobSpec, SearchSpace, Selector
from autocomp.version import __version__

__all__ = [
    "BoundSpace", "Channels", "Choice", "Constraint", "ExecutionSpec", "Executor", "FineTuneSpec", "FloatRange",
    "Group", "Heads", "IntRange", "KnobRange", "KnobSpec", "LatencySpec", "LowRank", "Objective", "Optimizer", "Policy",
    "PrimitiveConfig", "Prune", "Quantize", "Runtime", "SearchContext", "SearchResult", "SearchSpace", "Selector",
    "Share", "Skip", "Substitute", "Told", "Trial", "__version__", "compress", "export", "load_packed",
    "load_run_spec", "parse_run_spec", "register_executor", "register_optimizer", "register_primitive",
    "register_runtime", "search",
]
