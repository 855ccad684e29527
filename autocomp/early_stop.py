"""Multi-fidelity: when a candidate's fine-tuning stops early, from the learning curves seen so far.

Every trial records the task's primary validation metric after each fine-tuning epoch (metrics `accuracy@1`,
..., or `perplexity@1`, ... for a language model). Before a candidate starts, the driver turns the journal
into bars, epoch -> the value a candidate must reach there to go on; the evaluator stops (the trial is
`pruned`) on the wrong side of a bar (below it for a metric to maximize, above it for one to minimize).
The rule sees only the journal, so it is the same for every optimizer and on every executor, and a resumed
run recomputes it.

- median: Optuna's MedianPruner rule: below the median of the trials that reached that epoch.
- halving: asynchronous successive halving (ASHA; Optuna's SuccessiveHalvingPruner): rungs at
  min_epochs x eta^k; at a rung only the best 1/eta of the candidates that reached it go on.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

RULES = ("none", "median", "halving")


def curve_key(epoch: int, metric: str = "accuracy") -> str:
    """The name under which `metric` on the validation data after `epoch` fine-tuning epochs is journaled."""
    return f"{metric}@{epoch}"


def curve(metrics: Mapping[str, float], metric: str = "accuracy") -> dict[int, float]:
    """Epoch -> the validation `metric` after that many fine-tuning epochs.

    Only whole-number suffixes are epochs: a capped run's front also holds `<metric>@capped`.
    """
    prefix = f"{metric}@"
    return {int(k[len(prefix):]): v for k, v in metrics.items()
            if k.startswith(prefix) and k[len(prefix):].isascii() and k[len(prefix):].isdigit()}


def rungs(rule: str, epochs: int, min_epochs: int = 1, eta: int = 3) -> list[int]:
    """The epochs (before the last) at which the rule may stop a candidate."""
    if rule == "median":
        return list(range(min_epochs, epochs))
    if rule == "halving":
        out, epoch = [], min_epochs
        while epoch < epochs:
            out.append(epoch)
            epoch *= eta
        return out
    return []


def bars(curves: Iterable[Mapping[int, float]], rule: str, epochs: int, *, min_epochs: int = 1, eta: int = 3,
         startup: int = 5, maximize: bool = True) -> dict[int, float]:
    """Epoch -> the value needed there to continue, from the curves of earlier trials.

    A rung gets a bar once `startup` trials have reached it. With `maximize` False (a metric such as
    perplexity) the best are the lowest, and a candidate must stay at or below the bar.
    """
    seen = list(curves)
    sign = 1.0 if maximize else -1.0
    out: dict[int, float] = {}
    for epoch in rungs(rule, epochs, min_epochs, eta):
        values = sorted(sign * c[epoch] for c in seen if epoch in c)
        if len(values) < max(startup, 1):
            continue
        if rule == "median":
            out[epoch] = sign * statistics.median(values)
        else:  # the value the best 1/eta are at or above
            out[epoch] = sign * values[max(0, len(values) - max(1, len(values) // eta))]
    return out


__all__ = ["bars", "curve", "curve_key", "rungs"]
