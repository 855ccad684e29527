"""Compression primitives: frozen configs and the handlers that apply them."""

from autocomp.primitives import channels, lowrank, prune, quantize, share, skip, substitute  # noqa: F401  (handlers)
from autocomp.primitives.configs import (
    CONFIGS,
    STAGES,
    Channels,
    KnobRange,
    LowRank,
    PrimitiveConfig,
    Prune,
    Quantize,
    Share,
    Skip,
    Substitute,
)
from autocomp.primitives.heads import Heads
from autocomp.primitives.registry import (
    HANDLERS,
    MODEL_HANDLERS,
    CompressContext,
    LayerHandler,
    ModelHandler,
    apply_primitive,
    register_primitive,
)

__all__ = ["CONFIGS", "HANDLERS", "MODEL_HANDLERS", "STAGES", "Channels", "CompressContext", "Heads", "KnobRange",
           "LayerHandler", "LowRank", "ModelHandler", "PrimitiveConfig", "Prune", "Quantize", "Share", "Skip",
           "Substitute", "apply_primitive", "register_primitive"]
