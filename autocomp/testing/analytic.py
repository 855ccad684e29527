"""An evaluator with analytic metrics: fast, deterministic, with a known trade-off between knobs.

Each layer has a size and a sensitivity; accuracy falls smoothly (and differently per layer) as it is
pruned, factorised or quantized, so a good per-layer search beats a uniform one, as on real models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from autocomp.policy import Policy


class AnalyticEvaluator:
    """Metrics of a policy over layers {name: (weights, sensitivity)}, without any model."""

    def __init__(self, layers: Mapping[str, tuple[int, float]]) -> None:
        self.layers = dict(layers)

    def __call__(self, policy: Policy) -> dict[str, float]:
        size_bits, loss = 0.0, 0.0
        for name, (weights, sensitivity) in self.layers.items():
            knobs = {c.NAME: c for c in policy.for_layer(name)}
            ratio = knobs["prune"].ratio if "prune" in knobs else 0.0
            rank = knobs["lowrank"].rank_ratio if "lowrank" in knobs else 1.0
            bits = knobs["quantize"].bits if "quantize" in knobs else 32
            kept = (1.0 - ratio) * min(1.0, 2 * rank)
            size_bits += weights * kept * min(bits, 32)
            loss += sensitivity * (ratio**4 + (1 - rank) ** 3 + math.exp(-(min(bits, 16) - 1)))
        return {"accuracy": max(0.0, 0.99 - loss), "size_bytes": 64 + size_bits / 8}
