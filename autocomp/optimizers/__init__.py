"""Search strategies behind one ask/tell interface (`Optimizer`), by name."""

from autocomp.optimizers.base import LayerProfile, Optimizer, Params, SearchContext, Told
from autocomp.optimizers.registry import (
    OPTIMIZERS,
    OptimizerRef,
    OptimizerSpec,
    check_settings,
    make_optimizer,
    optimizer_class,
    optimizer_name,
    register_optimizer,
)

__all__ = ["OPTIMIZERS", "LayerProfile", "Optimizer", "OptimizerRef", "OptimizerSpec", "Params", "SearchContext",
           "Told", "check_settings", "make_optimizer", "optimizer_class", "optimizer_name", "register_optimizer"]
