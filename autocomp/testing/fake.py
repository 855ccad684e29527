"""An analytic fake evaluator: accuracy and size as smooth functions of the params, in microseconds.

Layers differ (earlier ones are large and robust, later ones small and sensitive), as in real networks,
so a per-layer search has something to find that uniform and random policies miss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from autocomp.space.space import BoundSpace


def fake_metrics(space: BoundSpace, params: Mapping[str, Any]) -> dict[str, float]:
    """Accuracy falls towards chance (0.1) as damage adds up; most random policies damage some layer."""
    layers = list(space.layers)
    size = damage = 0.0
    for i, layer in enumerate(layers):
        weights = 100_000 / 3**i
        sensitivity = 3.0**i
        knobs = {p.knob: params[p.name] for p in space.params if layer in p.layers}
        kept = (1.0 - knobs.get("prune.ratio", 0.0)) * (1.0 - knobs.get("channels.ratio", 0.0))
        rank = knobs.get("lowrank.rank_ratio", 1.0)
        bits = min(knobs.get("quantize.bits", 32), knobs.get("share.bits", 32))
        size += weights * kept * rank * bits / 8
        damage += sensitivity * (2.0 * max(0.0, 0.5 - kept) ** 2 + 2.0 ** -(bits - 1) + 0.2 * (1.0 - rank) ** 2)
    return {"accuracy": 0.1 + 0.89 * math.exp(-damage), "size_bytes": size}


def full_size(space: BoundSpace) -> float:
    return sum(100_000 / 3**i * 4 for i in range(len(space.layers)))


__all__ = ["fake_metrics", "full_size"]
