"""Compression primitives: frozen configs and the handlers that apply them to one layer."""

from autocomp.primitives import lowrank, prune, quantize  # noqa: F401  (registers the handlers)
from autocomp.primitives.configs import CONFIGS, STAGES, LowRank, PrimitiveConfig, Prune, Quantize
from autocomp.primitives.registry import HANDLERS, apply_primitive

__all__ = ["CONFIGS", "HANDLERS", "STAGES", "LowRank", "PrimitiveConfig", "Prune", "Quantize", "apply_primitive"]
