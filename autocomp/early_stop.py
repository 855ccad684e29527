"""Multi-fidelity: when a candidate's fine-tuning stops early, from the learning curves seen so far.

Every trial records its validation accuracy after each fine-tuning epoch (metrics `accuracy@1`, ...).
Before a candidate starts, the driver turns the journal into bars, epoch -> the accuracy a candidate must
reach there to go on; the evaluator stops (the trial is `pruned`) below a bar. The rule sees only the
journal, so it is the same for every optimizer and on every executor, and a resumed run recomputes it.

- median: Optuna's MedianPruner rule: below the median of the trials that reached that epoch.
- halving: asynchronous successive halving (ASHA; Optuna's SuccessiveHalvingPruner): rungs at
  min_epochs x eta^k; at a rung only the best 1/eta of the candidates that reached it go on.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

RULES = ("none", "median", "halving")


def curve_key(epoch: int) -> str:
    """The metric name of the validation accuracy after `epoch` fine-tuning epochs."""
    return f"accuracy@{epoch}"


def curve(metrics: Mapping[str, float]) -> dict[int, float]:
    """Epoch -> validation accuracy after that many fine-tuning epochs."""
    return {int(k.split("@", 1)[1]): v for k, v in metrics.items() if k.startswith("accuracy@")}


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
         startup: int = 5) -> dict[int, float]:
    """Epoch -> the accuracy needed there to continue, from the curves of earlier trials.

    A rung gets a bar once `startup` trials have reached it.
    """
    seen = list(curves)
    out: dict[int, float] = {}
    for epoch in rungs(rule, epochs, min_epochs, eta):
        values = sorted(c[epoch] for c in seen if epoch in c)
        if len(values) < max(startup, 1):
            continue
        if rule == "median":
            out[epoch] = statistics.median(values)
        else:  # the value the best 1/eta are at or above
            out[epoch] = values[max(0, len(values) - max(1, len(values) // eta))]
    return out


__all__ = ["bars", "curve", "curve_key", "rungs"]
