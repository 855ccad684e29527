"""autocomp: search-based compression for PyTorch; every size and latency measured on the exported artifact."""

__version__ = "0.1.0"

from autocomp.compress import compress  # noqa: E402
from autocomp.export import load_packed  # noqa: E402
from autocomp.objective import Constraint, Objective  # noqa: E402
from autocomp.policy import Policy  # noqa: E402
from autocomp.primitives import LowRank, Prune, Quantize  # noqa: E402
from autocomp.runner import SearchResult, Trial, search  # noqa: E402
from autocomp.space.loader import load_run_spec  # noqa: E402
from autocomp.space.params import Choice, FloatRange, IntRange  # noqa: E402
from autocomp.space.space import Group, KnobSpec, SearchSpace, Selector  # noqa: E402
from autocomp.space.spec import ExecutionSpec, LatencySpec  # noqa: E402

__all__ = [
    "Choice", "Constraint", "ExecutionSpec", "FloatRange", "Group", "IntRange", "KnobSpec", "LatencySpec", "LowRank",
    "Objective", "Policy", "Prune", "Quantize", "SearchResult", "SearchSpace", "Selector", "Trial",
    "compress", "load_packed", "load_run_spec", "search",
]
