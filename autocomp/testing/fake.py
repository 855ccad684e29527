"""An analytic fake evaluator: accuracy and size as smooth functions of the params, in microseconds.

Layers differ (earlier ones are large and robust, later ones small and sensitive), as in real networks,
so a per-layer search has something to find that uniform and random policies miss.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from autocomp.policy import Policy
from autocomp.space import BoundSpace


def fake_metrics(space: BoundSpace, params: Mapping[str, Any]) -> dict[str, float]:
    """Accuracy falls towards chance (0.1) as damage adds up; most random policies damage some layer."""
    knobs = [{p.knob: params[p.name] for p in space.params if layer in p.layers} for layer in space.layers]
    return _metrics(knobs)


def _metrics(layer_knobs: list[Mapping[str, Any]]) -> dict[str, float]:
    """Layer i holds 100,000 / 3^i weights with sensitivity 3^i; knobs are "primitive.knob" -> value."""
    size = damage = 0.0
    for i, knobs in enumerate(layer_knobs):
        weights = 100_000 / 3**i
        sensitivity = 3.0**i
        kept = (1.0 - knobs.get("prune.ratio", 0.0)) * (1.0 - knobs.get("channels.ratio", 0.0))
        rank = knobs.get("lowrank.rank_ratio", 1.0)
        bits = min(knobs.get("quantize.bits", 32), knobs.get("share.bits", 32))
        size += weights * kept * rank * bits / 8
        damage += sensitivity * (2.0 * max(0.0, 0.5 - kept) ** 2 + 2.0 ** -(bits - 1) + 0.2 * (1.0 - rank) ** 2)
    return {"accuracy": 0.1 + 0.89 * math.exp(-damage), "size_bytes": size}


class AnalyticEvaluator:
    """`fake_metrics` as an evaluator of policies, for executors (picklable: Ray workers run it).

    Also reports the evaluating process's resident memory and open file descriptors, so a soak test can
    watch workers.
    """

    def __init__(self, layers: Sequence[str]) -> None:
        self.layers = list(layers)

    def __call__(self, policy: Policy) -> dict[str, float]:
        """The policy's fake metrics, plus this process's memory and file descriptors."""
        configs = dict(policy.layers)
        knobs = [{f"{c.NAME}.{k}": v for c in configs.get(layer, ()) for k, v in c.knobs().items()}
                 for layer in self.layers]
        return {**_metrics(knobs), **process_usage()}


def process_usage() -> dict[str, float]:
    """This process's resident set (MB), open file descriptors and pid, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return {"rss_mb": resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20,
            "open_fds": float(len(os.listdir("/proc/self/fd"))), "pid": float(os.getpid())}


def full_size(space: BoundSpace) -> float:
    """The fake size_bytes of the uncompressed model: every layer's fp32 weights (see `fake_metrics`)."""
    return sum(100_000 / 3**i * 4 for i in range(len(space.layers)))


__all__ = ["AnalyticEvaluator", "fake_metrics", "full_size", "process_usage"]
