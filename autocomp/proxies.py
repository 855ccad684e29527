"""Cheap gradient proxies of per-layer sensitivity: a Fisher-weighted weight error and a Hutchinson trace.

What NVIDIA ModelOpt's AutoQuantize and HAWQ-V2/V3 score layers with instead of evaluating each change:

- Fisher: the empirical Fisher diagonal F of the task's loss at the uncompressed weights (squared loss
  gradients, summed over a few calibration batches). The loss increase a weight change dW causes is
  predicted, to second order around a minimum, as 0.5 * sum(F * dW^2). For each (param, value) of the bound
  space, dW is what compressing with only that value changed (every other param at its least compressive
  value, the reference) does to the searched layers' effective weights (a low-rank layer's is the product of
  its factors). Where a layer's weight changes shape or disappears (channel removal, a skipped block) no
  weight comparison makes sense and that (param, value) gets no "loss" entry;
- Hutchinson: per searched layer, tr(H) estimated with Rademacher probes v as the mean of v^T H v (one
  Hessian-vector product per probe by double back-propagation), recorded for the heat map (HAWQ weighs a
  layer's quantization error by its mean Hessian eigenvalue, trace / weights).

The table also holds, per (param, value), the change of whatever `measure` reports (the runner gives the
packed size_bytes and FLOPs): what an allocator budgets, with no evaluation at all. The cost is one
gradient pass per calibration batch, `probes` Hessian-vector products and one compression per value.
The proxy's units are the loss's: a search maps them to its first objective by one fitted factor.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autocomp.compress import compress
from autocomp.layers import weight_of
from autocomp.policy import Policy
from autocomp.space import BoundSpace
from autocomp.tasks import Task

Measure = Callable[[nn.Module, Policy], Mapping[str, float]]


@dataclass
class ProxyTable:
    """Per (param, value) predicted changes, and per layer the Hutchinson trace.

    `entries[param][repr(value)]` maps "loss" (the Fisher prediction, in the loss's units) and each measured
    metric (e.g. "size_bytes": the change against the reference) to a number. `trace[layer]` is the
    estimated trace of the loss's Hessian in that layer's weights, `weights[layer]` their count, `seconds`
    the wall time of the whole computation, `reference` what `measure` gave the reference.
    """

    entries: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    trace: dict[str, float] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rows: int = 0
    reference: dict[str, float] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """What the table says beyond its entries: traces, weights, the reference's metrics, rows, wall time."""
        return {"trace": dict(self.trace), "weights": dict(self.weights), "seconds": self.seconds,
                "rows": self.rows, "reference": dict(self.reference)}


def _weight(module: nn.Module) -> torch.Tensor | None:
    """The module's weight tensor (`weight_of`, else its `weight`), None when it has none (attention)."""
    try:
        weight = weight_of(module)
    except AttributeError:
        weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


def _effective_weight(model: nn.Module, layer: str) -> torch.Tensor | None:
    """The weight `layer` computes with (a factorised layer's product), None when the layer is gone."""
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        return None
    weight = _weight(module)
    return None if weight is None else weight.detach()


def _weights(model: nn.Module, layers: list[str]) -> tuple[list[str], list[torch.Tensor]]:
    """The layers that hold a weight tensor, and those tensors (an attention module searched for heads has none)."""
    found = [(name, _weight(model.get_submodule(name))) for name in layers]
    return [name for name, w in found if w is not None], [w for _, w in found if w is not None]


def _batches(data: tuple[torch.Tensor, torch.Tensor], count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = data
    size = max(1, math.ceil(len(x) / max(count, 1)))
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def fisher_diagonal(model: nn.Module, layers: list[str], data: tuple[torch.Tensor, torch.Tensor], task: Task,
                    *, batches: int = 4) -> dict[str, torch.Tensor]:
    """The empirical Fisher diagonal of each layer's weight: squared loss gradients summed over batches.

    Args:
        model: The model (not modified: gradients are taken on a copy).
        layers: The layers whose weights to score.
        data: Calibration rows (inputs, targets).
        task: Whose `loss` is differentiated.
        batches: How many batches the rows are split into (one gradient each).

    Returns:
        Layer name -> a tensor of the weight's shape (a layer without a weight tensor is left out).
    """
    work = copy.deepcopy(model).eval()
    layers, weights = _weights(work, layers)
    if not weights:  # nothing to differentiate (a space of attention modules searched for heads alone)
        return {}
    for w in weights:
        w.requires_grad_(True)
    out = {name: torch.zeros_like(w, dtype=torch.float64) for name, w in zip(layers, weights)}
    for x, y in _batches(data, batches):
        grads = torch.autograd.grad(task.loss(work(x), y), weights, allow_unused=True)
        for name, g in zip(layers, grads):
            if g is not None:
                out[name] += g.detach().double() ** 2
    return out


def hutchinson_trace(model: nn.Module, layers: list[str], data: tuple[torch.Tensor, torch.Tensor], task: Task,
                     *, probes: int = 8, seed: int = 0) -> dict[str, float]:
    """Per layer, tr(H) of the loss in that layer's weight, estimated by Rademacher probes.

    One probe spans every layer at once: the block of v^T H v that falls in a layer is an unbiased estimate
    of that layer's block trace.

    Args:
        model: The model (not modified).
        layers: The layers whose Hessian blocks to estimate.
        data: Rows the loss is taken on.
        task: Whose `loss` is differentiated (twice).
        probes: Rademacher vectors averaged.
        seed: Seeds the probes.

    Returns:
        Layer name -> the estimated trace (a layer without a weight tensor is left out).
    """
    work = copy.deepcopy(model).eval()
    layers, weights = _weights(work, layers)
    if not weights:
        return {}
    for w in weights:
        w.requires_grad_(True)
    x, y = data
    grads = torch.autograd.grad(task.loss(work(x), y), weights, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    totals = [0.0] * len(layers)
    for _ in range(probes):
        vs = [torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1 for w in weights]
        hvs = torch.autograd.grad(grads, weights, grad_outputs=vs, retain_graph=True, allow_unused=True)
        for i, (v, hv) in enumerate(zip(vs, hvs)):
            if hv is not None:
                totals[i] += float((v * hv).sum()) / probes
    return dict(zip(layers, totals))


def proxy_table(model: nn.Module, bound: BoundSpace, data: tuple[torch.Tensor, torch.Tensor], task: Task, *,
                measure: Measure | None = None, example: torch.Tensor | None = None,
                batches: int = 4, probes: int = 8, seed: int = 0) -> ProxyTable:
    """Predicted loss increase (and measured cost changes) of every (param, value) changed alone.

    Args:
        model: The uncompressed model.
        bound: The bound space (its least compressive values are the reference).
        data: Calibration rows (inputs, targets): a few hundred are plenty.
        task: The task whose loss is predicted.
        measure: Metrics of a compressed model that need no data (size, FLOPs); their change against the
            reference is recorded beside "loss".
        example: An input example for compressions that trace the model (channel removal).
        batches: Gradient batches for the Fisher diagonal.
        probes: Rademacher probes for the Hutchinson trace (0: no trace).
        seed: Seeds the probes.

    Returns:
        The table; see `ProxyTable`.
    """
    start = time.perf_counter()
    fisher = fisher_diagonal(model, list(bound.layers), data, task, batches=batches)
    layers = list(fisher)  # those with a weight tensor
    table = ProxyTable(rows=len(data[0]))
    table.weights = {name: int(f.numel()) for name, f in fisher.items()}
    if probes > 0:
        x, y = data
        try:
            table.trace = hutchinson_trace(model, layers, (x[:256], y[:256]), task, probes=probes, seed=seed)
        except RuntimeError:  # an op without a double backward: the heat map goes without traces
            table.trace = {}
    calibration = (data[0], data[1])
    reference = {p.name: p.least_compressive() for p in bound.params}

    def built(params: Mapping[str, Any]) -> tuple[nn.Module, Policy]:
        policy = Policy.from_params(bound, params)
        return compress(model, policy, example=example, calibration=calibration), policy

    base_model, base_policy = built(reference)
    base_weights = {name: _effective_weight(base_model, name) for name in layers}
    base_metrics = {k: float(v) for k, v in measure(base_model, base_policy).items()} if measure else {}
    table.reference = dict(base_metrics)
    for p in bound.params:
        row: dict[str, dict[str, float]] = {}
        for value in p.ordered():
            if value == reference[p.name]:  # the reference itself: no change at all
                row[repr(value)] = {"loss": 0.0, **{k: 0.0 for k in base_metrics}}
                continue
            changed, policy = built({**reference, p.name: value})
            entry: dict[str, float] = {}
            # a knob of a layer without a weight (attention's heads) changes what no weight comparison sees
            loss, comparable = 0.0, set(p.layers) <= set(layers)
            for name in layers if comparable else ():
                before, after = base_weights[name], _effective_weight(changed, name)
                if before is None or after is None or not after.shape == before.shape == fisher[name].shape:
                    comparable = False
                    break
                loss += 0.5 * float((fisher[name] * (after.double() - before.double()) ** 2).sum())
            if comparable:
                entry["loss"] = loss
            if measure:
                entry.update({k: float(v) - base_metrics[k] for k, v in measure(changed, policy).items()
                              if k in base_metrics})
            row[repr(value)] = entry
        table.entries[p.name] = row
    table.seconds = time.perf_counter() - start
    return table
