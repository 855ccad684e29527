"""The search space: groups of layers with primitives' knob domains, and its binding to a model."""

from autocomp.space.groups import COMPRESSIBLE, Group, KnobSpec, Selector, Where
from autocomp.space.params import Choice, Domain, FloatRange, IntRange, Param
from autocomp.space.space import BoundSpace, Coverage, SearchSpace

__all__ = ["COMPRESSIBLE", "BoundSpace", "Choice", "Coverage", "Domain", "FloatRange", "Group", "IntRange", "KnobSpec",
           "Param", "SearchSpace", "Selector", "Where"]
