"""Measurements of a (compressed) model: accuracy, parameters, FLOPs and wall-clock latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

LAYER_TYPES = (nn.Linear, nn.Conv2d)


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on (images, labels)."""
    x, y = data
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct / max(1, len(y))


def count_params(model: nn.Module) -> tuple[int, int]:
    """(stored parameters, nonzero parameters)."""
    tensors = list(model.parameters())
    return sum(t.numel() for t in tensors), sum(int(torch.count_nonzero(t)) for t in tensors)


@torch.no_grad()
def count_flops(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(FLOPs, sparse FLOPs) of one forward pass at `example` (2 x multiply-accumulates).

    FLOPs is what dense kernels execute; sparse FLOPs scales each Linear/Conv2d by its weights' density,
    the theoretical count a sparse kernel would need.
    """
    with FlopCounterMode(display=False) as counter:
        model(example)
    total = int(counter.get_total_flops())
    per_module = counter.get_flop_counts()
    prefix = type(model).__name__
    saved = 0.0
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES) and name:
            layer_flops = sum(per_module.get(f"{prefix}.{name}", {}).values())
            density = float(torch.count_nonzero(module.weight)) / module.weight.numel()
            saved += layer_flops * (1.0 - density)
    return total, int(round(total - saved))


def layer_profiles(model: nn.Module, example: torch.Tensor) -> list[dict[str, int | str]]:
    """Shape, parameter count and multiply-adds of every Linear and Conv2d, in the order the forward pass
    runs them (one example row), as plain numbers for optimizers that reason about layers."""
    rows: list[dict[str, int | str]] = []
    hooks = []

    def record(name: str, module: nn.Module):
        def hook(_module, _inputs, output):
            if any(r["name"] == name for r in rows):
                return
            if isinstance(module, nn.Conv2d):
                k, stride = module.kernel_size[0], module.stride[0]
                macs = output[0].numel() * module.in_channels // module.groups * k * module.kernel_size[1]
                rows.append({"name": name, "kind": "Conv2d", "in_channels": module.in_channels,
                             "out_channels": module.out_channels, "kernel": k, "stride": stride,
                             "params": module.weight.numel(), "flops": 2 * macs})
            else:
                rows.append({"name": name, "kind": "Linear", "in_channels": module.in_features,
                             "out_channels": module.out_features, "kernel": 1, "stride": 1,
                             "params": module.weight.numel(), "flops": 2 * module.weight.numel()})
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            hooks.append(module.register_forward_hook(record(name, module)))
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return rows


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def forward_times(model: Callable[[torch.Tensor], Any], example: torch.Tensor, *, warmup: int,
                  repeats: int) -> list[float]:
    """Wall times (ms) of `repeats` forward passes after `warmup` untimed ones, on the current threads."""
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(example)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def interleaved_latency(reference: Callable[[torch.Tensor], Any], candidate: Callable[[torch.Tensor], Any],
                        example: torch.Tensor, *, threads: int = 2, rounds: int = 7, repeats: int = 10,
                        warmup: int = 2) -> tuple[float, float, float]:
    """(reference ms, candidate ms, speedup): medians over alternating rounds, so machine noise hits both."""
    ref, cand = [], []
    with torch_threads(threads):
        for _ in range(rounds):
            ref.append(statistics.median(forward_times(reference, example, warmup=warmup, repeats=repeats)))
            cand.append(statistics.median(forward_times(candidate, example, warmup=warmup, repeats=repeats)))
    r, c = statistics.median(ref), statistics.median(cand)
    return r, c, r / c


def measure_latency(
    model: nn.Module, example: torch.Tensor, *, threads: int = 1, warmup: int = 10, repeats: int = 50
) -> dict[str, float]:
    """Median and interquartile range (ms) of a forward pass at `example`, after warm-up."""
    with torch_threads(threads):
        times = forward_times(model, example, warmup=warmup, repeats=repeats)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"latency_ms": statistics.median(times), "latency_iqr_ms": quartiles[2] - quartiles[0]}
