"""Conformance suites: every optimizer and every primitive implementation must pass these.

They are plain functions raising AssertionError, so tests parametrise them over implementations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autocomp.optimizers import Optimizer, Told, make_optimizer
from autocomp.pareto import hypervolume
from autocomp.space import BoundSpace
from autocomp.space.params import Choice, FloatRange, IntRange, Param
from autocomp.testing.fake import fake_metrics, full_size

OptimizerFactory = Callable[[BoundSpace, int], Optimizer]


def reference_space() -> BoundSpace:
    """Three layers, each with the three knob kinds (float with step, int, choice)."""
    params = []
    for layer in ("fc1", "fc2", "fc3"):
        params += [
            Param(name=f"{layer}.prune.ratio", domain=FloatRange(low=0.0, high=0.95, step=0.05),
                  primitive="prune", knob="prune.ratio", layers=(layer,), compresses=1),
            Param(name=f"{layer}.quantize.bits", domain=IntRange(low=2, high=8), primitive="quantize",
                  knob="quantize.bits", layers=(layer,), compresses=-1),
            Param(name=f"{layer}.lowrank.rank_ratio", domain=Choice(values=(0.25, 0.5, 1.0)),
                  primitive="lowrank", knob="lowrank.rank_ratio", layers=(layer,), compresses=-1),
        ]
    return BoundSpace(params=tuple(params), layers=("fc1", "fc2", "fc3"))


def _fake_values(params: dict[str, Any]) -> tuple[float, float]:
    size = sum(v for k, v in params.items() if k.endswith("bits")) - sum(
        v for k, v in params.items() if k.endswith("ratio"))
    acc = -sum((v - 0.3) ** 2 for k, v in params.items() if k.endswith("prune.ratio"))
    return acc, size


def run_steps(opt: Optimizer, steps: int, batch: int = 2, fail_every: int = 0) -> list[dict[str, Any]]:
    """Ask/tell `steps` batches of fake evaluations; returns every asked params dict.

    With `fail_every` (>= 4), every fail_every-th result is told as failed, the one after it as infeasible
    (scored, outside a constraint) and the next as infeasible before it was scored (no values, a violation).
    """
    asked: list[dict[str, Any]] = []
    for step in range(steps):
        candidates = opt.ask(batch)
        asked += candidates
        told = []
        for i, c in enumerate(candidates):
            k = step * batch + i
            failed = fail_every and k % fail_every == 0
            infeasible = fail_every and k % fail_every == 1  # complete, but outside a constraint
            unscored = fail_every and k % fail_every == 2  # skipped before fine-tuning, outside a constraint
            values = None if failed or unscored else _fake_values(c)
            told.append(Told(c, values, 0.25 if infeasible else 0.5 if unscored else 0.0))
        opt.tell(told)
    return asked


def check_optimizer(factory: OptimizerFactory) -> None:
    """Asks lie in the space; seeded determinism; state round trip; failures tolerated."""
    space = reference_space()
    first = run_steps(factory(space, 0), 6)
    assert first, "optimizer asked nothing"
    for candidate in first:
        assert space.contains(candidate), f"ask outside the space: {candidate}"
    assert run_steps(factory(space, 0), 6) == first, "same seed gave different asks"
    assert run_steps(factory(space, 1), 6) != first, "different seeds gave the same asks"
    # state_dict round trip (through JSON, as the run store saves it) continues identically
    opt = factory(space, 0)
    run_steps(opt, 3)
    state = json.loads(json.dumps(opt.state_dict()))
    expected = run_steps(opt, 3)
    clone = factory(space, 0)
    clone.load_state_dict(state)
    assert run_steps(clone, 3) == expected, "state_dict round trip changed the continuation"
    # failed and infeasible trials are tolerated (long enough for a generation to breed from them), and
    # survive the round trip
    tolerant = run_steps(factory(space, 0), 20, fail_every=4)
    assert all(space.contains(c) for c in tolerant)
    opt = factory(space, 0)
    run_steps(opt, 7, fail_every=4)
    state = json.loads(json.dumps(opt.state_dict()))
    expected = run_steps(opt, 7, fail_every=4)
    clone = factory(space, 0)
    clone.load_state_dict(state)
    assert run_steps(clone, 7, fail_every=4) == expected, "round trip after failures changed the continuation"


def search_hypervolume(opt: Optimizer, budget: int, batch: int = 4) -> float:
    """Hypervolume of (accuracy, log10 size_bytes) after `budget` fake evaluations.

    The reference point is accuracy 0.5 and the full size (as `autocomp bench search` measures it).
    """
    space, points, done = opt.space, [], 0
    while done < budget:
        candidates = opt.ask(min(batch, budget - done))
        if not candidates:
            break
        told = []
        for c in candidates:
            m = fake_metrics(space, c)
            points.append((m["accuracy"], math.log10(m["size_bytes"])))
            told.append(Told(c, (m["accuracy"], m["size_bytes"]), 0.0))
        opt.tell(told)
        done += len(candidates)
    return hypervolume(points, (0.5, math.log10(full_size(space))), ("maximize", "minimize"))


def check_beats_random(factory: OptimizerFactory, budget: int = 150, seeds: tuple[int, ...] = tuple(range(6))) -> None:
    """On the analytic fake evaluator, mean hypervolume over seeds beats random search's."""
    space = reference_space()
    mine = [search_hypervolume(factory(space, s), budget) for s in seeds]
    rand = [search_hypervolume(make_optimizer("random", space, directions=("maximize", "minimize"), seed=s), budget)
            for s in seeds]
    assert sum(mine) > sum(rand), f"hypervolume {sum(mine) / len(seeds):.4g} <= random's {sum(rand) / len(seeds):.4g}"


def snr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-noise ratio of `approx` against `reference`, in dB (inf when they are equal)."""
    noise = (reference - approx).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(reference.pow(2).sum().item() / noise)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`model(x)` without gradients."""
    with torch.no_grad():
        return model(x)


def check_identity_exact(model: nn.Module, compressed: nn.Module, x: torch.Tensor) -> None:
    """Assert that an identity config left the outputs bit-for-bit unchanged."""
    assert torch.equal(outputs(model, x), outputs(compressed, x)), "identity config changed the outputs"


def check_monotone(sizes: list[int], what: str) -> None:
    """Assert that `sizes` never grows (as the knob named by `what` compresses more)."""
    assert all(b <= a for a, b in zip(sizes, sizes[1:])), f"size grew as {what}: {sizes}"


def random_layer(out_features: int = 64, in_features: int = 128, seed: int = 0) -> nn.Linear:
    """A seeded Linear layer with N(0, 0.05^2) weights."""
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features) * 0.05)
    return layer


def deepcopy_equal(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules have the same state dict keys and exactly equal tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


__all__ = ["check_beats_random", "check_identity_exact", "check_monotone", "check_optimizer", "deepcopy_equal",
           "outputs", "random_layer", "reference_space", "run_steps", "search_hypervolume", "snr_db"]
